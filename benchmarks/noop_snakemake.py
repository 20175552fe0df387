"""`snakemake --cores all figures` on an up-to-date tree: jobs run and wall time (target: 0 jobs, <= 5 s)."""
import re
import subprocess
import sys
import time

from common import REPO, report


def main():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "all", "figures", *sys.argv[1:]],
                            cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        sys.exit(output[-2000:])
    done = re.search(r"(\d+) of (\d+) steps", output)
    jobs = int(done.group(2)) if done else 0
    report("jobs run by a second `snakemake --cores all figures`", jobs, "0", jobs == 0)
    report("wall time of that run (s)", seconds, "<= 5", seconds <= 5)


if __name__ == "__main__":
    main()
