rule collect_results:
    """All tidy result files of the study in one table (one row per run x metric)."""
    input:
        study_results(),
    output:
        table="results/results.csv",
        metrics="results/metrics.json",
    log:
        "logs/collect_results.log",
    shell:
        "{CLI} collect --out {output.table} --metrics {output.metrics} {input} > {log} 2>&1"


rule report:
    """One table or figure from the tidy results; the function is named after the output."""
    input:
        "results/results.csv",
    output:
        multiext("figures/{name}", ".md", ".tex"),
    wildcard_constraints:
        name="table_[a-z0-9_]+",
    log:
        "logs/report/{name}.log",
    shell:
        "{CLI} report {wildcards.name} --results {input} --out figures/{wildcards.name} > {log} 2>&1"


rule plot:
    input:
        "results/results.csv",
    output:
        "figures/{name}.png",
    wildcard_constraints:
        name="fig_[a-z0-9_]+",
    log:
        "logs/plot/{name}.log",
    shell:
        "{CLI} report {wildcards.name} --results {input} --out figures/{wildcards.name} > {log} 2>&1"


rule figures:
    input:
        multiext("figures/table_main", ".md", ".tex"),
        "figures/fig_bridge_vs_baselines.png",
