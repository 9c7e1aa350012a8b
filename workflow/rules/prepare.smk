rule prepare_data:
    output:
        data_files("{dataset}"),
    log:
        "logs/prepare_data/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("prepare"),
        dataset=lambda wc: as_json(config["datasets"][wc.dataset]),
        data_root=config["data_root"],
    shell:
        "python -m robustcore prepare --params {params.dataset:q} --data-root {params.data_root:q} "
        "--out results/data/{wildcards.dataset} > {log} 2>&1"
