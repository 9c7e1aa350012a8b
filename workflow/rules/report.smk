rule report_study:
    input:
        study_evals,
    output:
        table_csv=report(
            "results/report/{study}/tables/accuracy.csv",
            caption="../report/accuracy_table.rst",
            category="{study}",
            labels={"kind": "table"},
        ),
        table_md="results/report/{study}/tables/accuracy.md",
        figure_png=report(
            "results/report/{study}/figures/accuracy_vs_fraction.png",
            caption="../report/accuracy_vs_fraction.rst",
            category="{study}",
            labels={"kind": "figure"},
        ),
        figure_pdf="results/report/{study}/figures/accuracy_vs_fraction.pdf",
    log:
        "logs/report_study/{study}.log",
    conda:
        "../../envs/report.yaml"
    params:
        study=study_json,
    shell:
        "python -m robustcore report --study {params.study:q} --out results/report/{wildcards.study} "
        "{input:q} > {log} 2>&1"


rule report_index:
    input:
        expand("results/report/{study}/tables/accuracy.md", study=config["studies"]),
    output:
        "results/report/index.md",
    log:
        "logs/report_index.log",
    conda:
        "../../envs/report.yaml"
    params:
        studies=as_json(config["studies"]),
    shell:
        "python -m robustcore report --index --study {params.studies:q} --out {output} > {log} 2>&1"
