# Evaluate the trained network on the test split: results/{dataset}/test.json (the metrics)
# and results/{dataset}/test_predictions.csv (each test sample's target and prediction, for the
# report's confusion matrix or scatter plot), from one pass over the split.


rule test:
    input:
        data="resources/{dataset}/download.json",
        genotype="results/{dataset}/genotype.json",
        model="results/{dataset}/train/model.pt",
    output:
        json="results/{dataset}/test.json",
        predictions="results/{dataset}/test_predictions.csv",
    log:
        "logs/{dataset}/test.log",
    benchmark:
        "benchmarks/{dataset}/test.tsv"
    conda:
        "../envs/nas.yaml"
    threads: gpu_threads("test", 2)
    resources:
        gpu=gpus("test"),
    params:
        data=data_cfg,
        train=stage_cfg("train"),
        test=stage_cfg("test"),
        root=data_root,
        results=results_version("test"),
    script:
        "../scripts/test.py"
