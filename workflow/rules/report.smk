rule collect_results:
    """All tidy result files of the study in one table (one row per run x metric)."""
    input:
        lambda w: result_inputs(),  # ancient() unless rewritten now; their requests are in params
    output:
        table="results/results.csv",
        metrics="results/metrics.json",
    params:
        spec=lambda w: results_request(),
        code=code("collect"),
    log:
        "logs/collect_results.log",
    shell:
        "{CLI} collect --out {output.table} --metrics {output.metrics} {input} > {log} 2>&1"


rule report:
    """One table from the tidy results; the function in report.py is named after the output."""
    input:
        lambda w: unless_rerun("results/results.csv", results_request()),  # what decides it is in params
    output:
        multiext("figures/{name}", ".md", ".tex"),
    wildcard_constraints:
        name="table[0-9]*_[a-z0-9_]+",
    params:
        spec=lambda w: spec(study=STUDY),
        results=lambda w: results_request(),
        code=code("report") + code("collect"),
    log:
        "logs/report/{name}.log",
    shell:
        "{CLI} report {wildcards.name} --results {input} --spec {params.spec:q} --out figures/{wildcards.name} "
        "> {log} 2>&1"


rule plot:
    input:
        lambda w: unless_rerun("results/results.csv", results_request()),  # what decides it is in params
    output:
        "figures/{name}.png",
    wildcard_constraints:
        name="fig[0-9]*_[a-z0-9_]+",
    params:
        spec=lambda w: spec(study=STUDY),
        results=lambda w: results_request(),
        code=code("report") + code("collect"),
    log:
        "logs/plot/{name}.log",
    shell:
        "{CLI} report {wildcards.name} --results {input} --spec {params.spec:q} --out figures/{wildcards.name} "
        "> {log} 2>&1"


rule figures_readme:
    """figures/README.md: every output with the config fingerprint and the commit that produced it."""
    input:
        ancient([f for f in study_plan.study_figures(config)]),  # what decides them is in params
    output:
        "figures/README.md",
    params:
        spec=lambda w: spec(config_fingerprint=config_fingerprint()),
        results=lambda w: results_request(),
        code=code("figures-readme") + code("report") + code("soft-token-neighbours"),
    log:
        "logs/report/README.log",
    shell:
        "{CLI} figures-readme --spec {params.spec:q} --out {output} {input} > {log} 2>&1"


rule figures:
    input:
        study_plan.study_figures(config),
        "figures/README.md",
