# The trained model as something to use: results/{dataset}/model.json (the model card:
# network, genotype, weights, preprocessing, class names; what nas_core.load_model reads),
# written by nas_core/stages/model_card.py with nas_core/inference.py's format and network.
# What they compute is versioned (nas_core.versions.MODEL_CARD, with DATA): the rule reruns
# when a version changes, not when their bytes do.


rule model_card:
    input:
        data="resources/{dataset}/download.json",
        test="results/{dataset}/test.json",
        genotype="results/{dataset}/genotype.json",
        model="results/{dataset}/train/model.pt",
    output:
        card="results/{dataset}/model.json",
    log:
        "logs/{dataset}/model_card.log",
    benchmark:
        "benchmarks/{dataset}/model_card.tsv"
    conda:
        "../envs/nas.yaml"
    threads: 2
    resources:
        gpu=gpus("test"),
    params:
        data=data_cfg,
        train=stage_cfg("train"),
        root=data_root,
        genotype_source=lambda wildcards: ds(wildcards).genotype_source,
        results=results_version("model_card"),
    script:
        "../scripts/model_card.py"
