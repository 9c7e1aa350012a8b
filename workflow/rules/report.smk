# Categories, labels and params of the HTML report.
include: "report_common.smk"


rule report_study:
    input:
        study_evals,
    output:
        table_html=report(
            "results/report/{study}/tables/accuracy.html",
            caption="../report/accuracy_table.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("accuracy.html"),
        ),
        table_md="results/report/{study}/tables/accuracy.md",
        table_csv="results/report/{study}/tables/accuracy.csv",
        table_tex="results/report/{study}/tables/accuracy.tex",
        # Shown in the report inside accuracy.html, and only where the study compares arms.
        comparisons_md="results/report/{study}/tables/comparisons.md",
        comparisons_csv="results/report/{study}/tables/comparisons.csv",
        comparisons_tex="results/report/{study}/tables/comparisons.tex",
        fraction_png=report(
            "results/report/{study}/figures/accuracy_vs_fraction.png",
            caption="../report/accuracy_vs_fraction.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("accuracy_vs_fraction.png"),
        ),
        fraction_pdf="results/report/{study}/figures/accuracy_vs_fraction.pdf",
        tradeoff_png=report(
            "results/report/{study}/figures/clean_vs_robust.png",
            caption="../report/clean_vs_robust.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("clean_vs_robust.png"),
        ),
        tradeoff_pdf="results/report/{study}/figures/clean_vs_robust.pdf",
    log:
        "logs/report_study/{study}.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=code_version("report"),
        study=study_param,
    shell:
        "python -m robustcore report --part study --study {params.study:jsonq} "
        "--out results/report/{wildcards.study} {input:q} > {log} 2>&1"


rule report_compute:
    input:
        study_evals,
    output:
        table_html=report(
            "results/report/{study}/tables/compute.html",
            caption="../report/compute_table.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("compute.html"),
        ),
        table_md="results/report/{study}/tables/compute.md",
        table_csv="results/report/{study}/tables/compute.csv",
        table_tex="results/report/{study}/tables/compute.tex",
        figure_png=report(
            "results/report/{study}/figures/robust_vs_compute.png",
            caption="../report/robust_vs_compute.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("robust_vs_compute.png"),
        ),
        figure_pdf="results/report/{study}/figures/robust_vs_compute.pdf",
    log:
        "logs/report_compute/{study}.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=code_version("report"),
        study=study_param,
    shell:
        "python -m robustcore report --part compute --study {params.study:jsonq} "
        "--out results/report/{wildcards.study} {input:q} > {log} 2>&1"


rule plot_top_vs_bottom:
    input:
        study_evals,
    output:
        png=report(
            "results/report/{study}/figures/top_vs_bottom.png",
            caption="../report/top_vs_bottom.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("top_vs_bottom.png"),
        ),
        pdf="results/report/{study}/figures/top_vs_bottom.pdf",
    log:
        "logs/plot_top_vs_bottom/{study}.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=code_version("report"),
        study=study_param,
    shell:
        "python -m robustcore report --part top_vs_bottom --study {params.study:jsonq} "
        "--out results/report/{wildcards.study} {input:q} > {log} 2>&1"


rule plot_hardness:
    input:
        lambda wc: figure_inputs(hardness_params(wc)),
    output:
        examples=report(
            "results/report/{study}/figures/hardness_examples.png",
            caption="../report/hardness_examples.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("hardness_examples.png"),
        ),
        examples_pdf="results/report/{study}/figures/hardness_examples.pdf",
        examples_json="results/report/{study}/figures/hardness_examples.json",
        distribution=report(
            "results/report/{study}/figures/hardness_distribution.png",
            caption="../report/hardness_distribution.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("hardness_distribution.png"),
        ),
        distribution_pdf="results/report/{study}/figures/hardness_distribution.pdf",
        distribution_json="results/report/{study}/figures/hardness_distribution.json",
    log:
        "logs/plot_hardness/{study}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("figure"),
        figure=figure_param(hardness_params, "hardness"),
    shell:
        "python -m robustcore figure --kind hardness --params {params.figure:jsonq} "
        "--out results/report/{wildcards.study} > {log} 2>&1"


rule plot_proxy_agreement:
    input:
        lambda wc: figure_inputs(proxy_agreement_params(wc)),
    output:
        png=report(
            "results/report/{study}/figures/proxy_agreement.png",
            caption="../report/proxy_agreement.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("proxy_agreement.png"),
        ),
        pdf="results/report/{study}/figures/proxy_agreement.pdf",
        table_csv="results/report/{study}/tables/proxy_agreement.csv",
        table_html=report(
            "results/report/{study}/tables/proxy_agreement.html",
            caption="../report/figure_numbers.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("proxy_agreement.html"),
        ),
        table_md="results/report/{study}/tables/proxy_agreement.md",
        table_tex="results/report/{study}/tables/proxy_agreement.tex",
    log:
        "logs/plot_proxy_agreement/{study}.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=code_version("figure"),
        figure=figure_param(proxy_agreement_params, "proxy_agreement"),
    shell:
        "python -m robustcore figure --kind proxy_agreement --params {params.figure:jsonq} "
        "--out results/report/{wildcards.study} > {log} 2>&1"


rule plot_decision_boundary:
    input:
        lambda wc: figure_inputs(decision_boundary_params(wc)),
    output:
        png=report(
            "results/report/{study}/figures/decision_boundary.png",
            caption="../report/decision_boundary.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("decision_boundary.png"),
        ),
        pdf="results/report/{study}/figures/decision_boundary.pdf",
        measured="results/report/{study}/figures/decision_boundary.json",
    log:
        "logs/plot_decision_boundary/{study}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        code=code_version("figure"),
        figure=figure_param(decision_boundary_params, "decision_boundary"),
    shell:
        "python -m robustcore figure --kind decision_boundary --params {params.figure:jsonq} "
        "--out results/report/{wildcards.study} > {log} 2>&1"


rule plot_feature_projection:
    input:
        lambda wc: figure_inputs(feature_projection_params(wc)),
    output:
        png=report(
            "results/report/{study}/figures/feature_projection.png",
            caption="../report/feature_projection.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("feature_projection.png"),
        ),
        pdf="results/report/{study}/figures/feature_projection.pdf",
        measured="results/report/{study}/figures/feature_projection.json",
    log:
        "logs/plot_feature_projection/{study}.log",
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("plot_feature_projection")
    resources:
        runtime=job_runtime("plot_feature_projection"),
        mem_mb=job_mem_mb("plot_feature_projection"),
        gpu=job_gpus("plot_feature_projection"),
    params:
        code=code_version("figure"),
        figure=figure_param(feature_projection_params, "feature_projection"),
    shell:
        "python -m robustcore figure --kind feature_projection --params {params.figure:jsonq} "
        "--out results/report/{wildcards.study} > {log} 2>&1"


rule plot_sparse_fgsm_signal:
    input:
        lambda wc: figure_inputs(sparse_fgsm_signal_params(wc)),
    output:
        png=report(
            "results/report/{study}/figures/sparse_fgsm_signal.png",
            caption="../report/sparse_fgsm_signal.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("sparse_fgsm_signal.png"),
        ),
        pdf="results/report/{study}/figures/sparse_fgsm_signal.pdf",
        table_csv="results/report/{study}/tables/sparse_fgsm_signal.csv",
        table_html=report(
            "results/report/{study}/tables/sparse_fgsm_signal.html",
            caption="../report/figure_numbers.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("sparse_fgsm_signal.html"),
        ),
        table_md="results/report/{study}/tables/sparse_fgsm_signal.md",
        table_tex="results/report/{study}/tables/sparse_fgsm_signal.tex",
    log:
        "logs/plot_sparse_fgsm_signal/{study}.log",
    benchmark:
        "logs/benchmarks/plot_sparse_fgsm_signal/{study}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: job_threads("plot_sparse_fgsm_signal")
    resources:
        runtime=job_runtime("plot_sparse_fgsm_signal"),
        mem_mb=job_mem_mb("plot_sparse_fgsm_signal"),
        gpu=job_gpus("plot_sparse_fgsm_signal"),
    params:
        code=code_version("figure"),
        figure=figure_param(sparse_fgsm_signal_params, "sparse_fgsm_signal"),
    shell:
        "python -m robustcore figure --kind sparse_fgsm_signal --params {params.figure:jsonq} "
        "--out results/report/{wildcards.study} > {log} 2>&1"


rule plot_easy_hard_accuracy:
    input:
        lambda wc: figure_inputs(easy_hard_params(wc)),
    output:
        png=report(
            "results/report/{study}/figures/easy_hard_accuracy.png",
            caption="../report/easy_hard_accuracy.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("easy_hard_accuracy.png"),
        ),
        pdf="results/report/{study}/figures/easy_hard_accuracy.pdf",
        table_csv="results/report/{study}/tables/easy_hard_accuracy.csv",
        table_html=report(
            "results/report/{study}/tables/easy_hard_accuracy.html",
            caption="../report/figure_numbers.rst",
            category=report_category,
            subcategory="{study}",
            labels=report_labels("easy_hard_accuracy.html"),
        ),
        table_md="results/report/{study}/tables/easy_hard_accuracy.md",
        table_tex="results/report/{study}/tables/easy_hard_accuracy.tex",
        diffs="results/report/{study}/tables/easy_hard_accuracy_diffs.csv",
    log:
        "logs/plot_easy_hard_accuracy/{study}.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=code_version("figure"),
        figure=figure_param(easy_hard_params, "easy_hard_accuracy"),
    shell:
        "python -m robustcore figure --kind easy_hard_accuracy --params {params.figure:jsonq} "
        "--out results/report/{wildcards.study} > {log} 2>&1"


rule report_index:
    input:
        [file for name in config["studies"] for file in study_outputs(name)],
    output:
        index="results/report/index.md",
        # The report's landing page (workflow/report/workflow.rst) includes this table.
        claims="results/report/claims.html",
    log:
        "logs/report_index.log",
    conda:
        "../../envs/report.yaml"
    params:
        code=code_version("report"),
        studies=lambda wildcards: index_studies(),
    shell:
        "python -m robustcore report --index --study {params.studies:jsonq} --out {output.index} "
        "> {log} 2>&1"
