# Arrays (generated, or read through torchvision: downloads need the internet a login node has)
# and image-folder index tables take seconds to minutes: localrules (Snakefile).
rule prepare_data:
    output:
        multiext("results/data/{dataset}/", "train.npz", "test.npz", "meta.json"),
    log:
        "logs/prepare_data/{dataset}.log",
    wildcard_constraints:
        dataset=datasets_of_kind("array"),
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("prepare"),
        dataset=prepare_params,
        data_root=config["data_root"],
    shell:
        "python -m robustcore prepare --params {params.dataset:q} --data-root {params.data_root:q} "
        "--out results/data/{wildcards.dataset} > {log} 2>&1"


rule prepare_folder:
    output:
        multiext(
            "results/data/{dataset}/", "train.parquet", "test.parquet", "meta.json"
        ),
    log:
        "logs/prepare_folder/{dataset}.log",
    wildcard_constraints:
        dataset=datasets_of_kind("folder"),
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("prepare"),
        dataset=prepare_params,
        data_root=config["data_root"],
    shell:
        "python -m robustcore prepare --params {params.dataset:q} --data-root {params.data_root:q} "
        "--out results/data/{wildcards.dataset} > {log} 2>&1"


# An image folder with `decode`: every image decoded once into memory-mappable shards by
# decode.workers processes, as a cluster job (CPU partition) with their CPUs, memory and a time
# limit from robustcore.jobcost. data_root must be visible from the compute nodes.
rule prepare_shards:
    output:
        train=directory("results/data/{dataset}/train"),
        test=directory("results/data/{dataset}/test"),
        meta="results/data/{dataset}/meta.json",
    log:
        "logs/prepare_shards/{dataset}.log",
    benchmark:
        "logs/benchmarks/prepare_shards/{dataset}.tsv"
    wildcard_constraints:
        dataset=datasets_of_kind("shards"),
    conda:
        "../../envs/torch.yaml"
    threads: decode_threads
    resources:
        runtime=job_runtime("prepare_shards"),
        mem_mb=job_mem_mb("prepare_shards"),
    params:
        code=code_version("prepare"),
        dataset=prepare_params,
        data_root=config["data_root"],
    shell:
        "python -m robustcore prepare --params {params.dataset:q} --data-root {params.data_root:q} "
        "--workers {threads} --out results/data/{wildcards.dataset} > {log} 2>&1"
