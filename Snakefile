# interlingua: cross-model latent communication, end to end.
#   snakemake --cores all figures                          default study (params.yaml): every study's figures
#   snakemake --cores all figures_latentwire               the LatentWire study alone
#   snakemake --cores all figures_kv_alignment             the K-V cache alignment study alone
#   snakemake --cores all figures_dense_kv                 the dense heterogeneous KV transfer study alone
#   snakemake --cores all figures --configfile config/smoke.yaml   tiny models, minutes
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: Path(workflow.basedir) / "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/speed.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/kv_alignment.smk"
include: "workflow/rules/dense_kv.smk"
include: "workflow/rules/targets.smk"


rule all:
    default_target: True
    input:
        rules.figures.input,
