"""Wait until a Ray head accepts job submissions, then return (exit 0); exit 1 after the timeout.

    ray start --head --dashboard-host=127.0.0.1
    python -m activesyn_ray.jobs.wait              # [ADDRESS] [--timeout SECONDS], default 300
    ray job submit --working-dir . -- python -m activesyn_ray.jobs.run jobs/quickstart.yaml

`ray start` returns before the head's job agent is up: the dashboard answers, but a submission
fails with "No available agent to submit job, please try again later" for tens of seconds on a busy
machine (Ray answers no API call about the agent). So this submits what `ray job submit` would --
to the same address (ADDRESS, else RAY_ADDRESS, else the local head, as the Jobs CLI resolves it)
-- a no-op job (`echo ...`), until one is accepted, and waits for it to end. That job stays in
`ray job list` (metadata `activesyn: wait-for-head`): deleting it right after it ends races Ray's
job monitor, which then re-creates it as FAILED ("Entrypoint not found", seen on Ray 2.60).
"""

from __future__ import annotations

import argparse
import sys
import time

RETRY_S = 2.0
PROBE = "echo 'activesyn_ray.jobs.wait: this head accepts jobs'"


def wait_for_head(address: str | None = None, *, timeout_s: float = 300,
                  log=lambda msg: None) -> float:
    """Seconds it took until the head at `address` accepted a no-op job and ran it to its end;
    TimeoutError with the last error after `timeout_s`."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    t0 = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - t0 < timeout_s:
        try:
            client = JobSubmissionClient(address)  # raises while the dashboard is not up
            job = client.submit_job(entrypoint=PROBE, metadata={"activesyn": "wait-for-head"})
        except Exception as err:  # connection refused, "No available agent ...", auth, ...
            text = " ".join(str(err).split())
            if text != last:
                log(f"not ready yet: {text[:200]}")
            last = text
            time.sleep(RETRY_S)
            continue
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                  JobStatus.STOPPED}:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"the head accepted a no-op job ({job}) but did not finish it "
                                   f"within {timeout_s:g}s")
            time.sleep(0.5)
        return time.monotonic() - t0
    raise TimeoutError(f"no Ray head accepted a job within {timeout_s:g}s; last error: {last[:300]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default=None,
                        help="dashboard address as for `ray job submit --address` (default: "
                             "RAY_ADDRESS, else the head started on this machine)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds (default 300)")
    args = parser.parse_args(argv)
    try:
        took = wait_for_head(args.address, timeout_s=args.timeout,
                             log=lambda m: print(f"[activesyn] {m}", file=sys.stderr, flush=True))
    except TimeoutError as err:
        sys.exit(f"error: {err}")
    print(f"[activesyn] the Ray head accepts jobs (waited {took:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
