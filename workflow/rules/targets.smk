# One target per pipeline stage: `snakemake --cores all <stage>`; dvc.yaml runs them in order.


rule models:
    input:
        expand("data/models/{model}", model=study_models()),


rule tasks:
    input:
        study_splits(),


rule activations:
    input:
        study_stores(),


rule checkpoints:
    input:
        study_checkpoints(),


rule evaluations:
    input:
        "results/results.csv",
        "results/paired_tests.csv",
