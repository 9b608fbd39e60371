"""Choosing a placement: the Policy, what a model weighs (sizes), the cost model, hardware
profiles and their measurement, the machine's budgets, and the OR-Tools planner. Imports the model
and memory rooms only."""
