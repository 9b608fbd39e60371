"""Put FLEXGEN_DATA_DIR's MMLU and XSum where HELM's scenarios look (see flexgen_eval/helm/offline_data.py).

    python scenarios/helm/prepare_offline_data.py -o benchmark_output
"""
import sys

from flexgen_eval.helm.offline_data import main

if __name__ == "__main__":
    sys.exit(main())
