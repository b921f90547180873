"""Round 2's ClientApp job on one node, cold (a fresh process loads everything, as Flower runs it) vs warm (the
node's warm worker): wall time of the per-message process from launch to reply, and the reply's own metrics.

    .venv/bin/python -m bench.warm_job                       # tiny model and corpus, built in a temp folder
    .venv/bin/python -m bench.warm_job --model M [--data D]  # e.g. SmolLM2 (default data: a demo node's)

Flower's delivery (pull/push over the runtime API) is the same both ways and not included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from federation import procs
from federation import warm_protocol as wire

SHIM = """
import sys
from pathlib import Path
from federation import node_runtime, warm_protocol as wire
message = wire.decode_message(Path(sys.argv[1]).read_bytes())
context = wire.decode_context(Path(sys.argv[2]).read_bytes())
reply = node_runtime.run_job(message, context)
Path(sys.argv[3]).write_bytes(wire.encode_message(reply))
"""


def make_jobs(model: Path, data: Path, out: Path, steps: int, seq_len: int) -> list[tuple[Path, Path]]:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from federation.config import TrainConfig
    from federation.task import get_adapter_state, lora_model

    cfg = TrainConfig(local_steps=steps, seq_len=seq_len)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    state = get_adapter_state(lora_model(str(model), cfg))
    paths = []
    for server_round in (1, 2):
        arrays = ArrayRecord({k: v + 0.001 * server_round for k, v in state.items()})
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
        message = Message(content, dst_node_id=1, message_type="train")
        message.metadata.__dict__["_message_id"] = message.object_id
        context = Context(run_id=1, node_id=1, node_config={"data-path": str(data), "name": "bench"},
                          state=RecordDict(),
                          run_config={**cfg.to_run_config(), "base-model-path": str(model)})  # fmt: skip
        m, c = out / f"r{server_round}.msg", out / f"r{server_round}.ctx"
        m.write_bytes(wire.encode_message(message))
        c.write_bytes(wire.encode_context(context))
        paths.append((m, c))
    return paths


def run_shim(job: tuple[Path, Path], out: Path, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", SHIM, str(job[0]), str(job[1]), str(out)], env=env, check=True)
    wall = time.perf_counter() - started
    metrics = wire.decode_message(out.read_bytes()).content["metrics"]
    keys = ("startup-seconds", "load-seconds", "train-seconds", "eval-seconds", "node-seconds")
    return {"wall-seconds": round(wall, 2)} | {k: round(float(metrics[k]), 2) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="warm-job-"))
    tmp.chmod(0o700)
    from federation.corpus import build_demo_corpus
    from testbed.tiny import build_tiny_checkpoint

    model = Path(args.model).resolve() if args.model else build_tiny_checkpoint(tmp / "model")
    if args.data:
        data = Path(args.data).resolve()
    else:
        build_demo_corpus(tmp / "corpus", n_contributors=2, max_chunks_per_node=16, max_heldout=8)
        data = tmp / "corpus" / "node-1"
    jobs = make_jobs(model, data, tmp, args.steps, args.seq_len)
    results = {}

    cold_env = procs.flower_env(tmp / "flwr-home")
    cold_env.pop(wire.ENV_SOCKET, None)
    run_shim(jobs[0], tmp / "cold1.out", cold_env)
    results["cold"] = run_shim(jobs[1], tmp / "cold2.out", cold_env)

    home = tmp / "home"
    home.mkdir(mode=0o700)
    log = (tmp / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "federation.warm_worker", "--home", str(home), "--model",
                               str(model), "--data", str(data)],
                              env=cold_env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        while "ready:" not in (tmp / "worker.log").read_text():
            assert worker.poll() is None, (tmp / "worker.log").read_text()
            time.sleep(0.2)
        warm_env = cold_env | {wire.ENV_SOCKET: str(wire.socket_path(home))}
        results["warm round 1"] = run_shim(jobs[0], tmp / "warm1.out", warm_env)
        results["warm"] = run_shim(jobs[1], tmp / "warm2.out", warm_env)
    finally:
        worker.terminate()
        worker.wait(30)
    same = (tmp / "cold2.out").read_bytes() == (tmp / "warm2.out").read_bytes()
    print(json.dumps({"model": str(model), "steps": args.steps, "seq-len": args.seq_len, **results}, indent=1))
    cold_arrays = wire.decode_message((tmp / "cold2.out").read_bytes()).content["arrays"]
    warm_arrays = wire.decode_message((tmp / "warm2.out").read_bytes()).content["arrays"]
    equal = all(cold_arrays[k].numpy().tobytes() == warm_arrays[k].numpy().tobytes() for k in cold_arrays)
    print(f"round 2 adapter warm == cold: {equal} (whole reply bytes equal: {same}, timings differ)")


if __name__ == "__main__":
    main()
