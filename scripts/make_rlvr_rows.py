"""Write RLVR (or SFT) rows from GSM8K / MATH / IFEval rows: the files in ../shared/data, or a hub dataset.

    .venv/bin/python scripts/make_rlvr_rows.py gsm8k ../shared/data/gsm8k/train.jsonl rows.jsonl [--limit N] [--sft]
    .venv/bin/python scripts/make_rlvr_rows.py math ../shared/data/math/math500_test.jsonl rows.jsonl
    .venv/bin/python scripts/make_rlvr_rows.py math HuggingFaceH4/MATH-500 math500.jsonl --split test
    .venv/bin/python scripts/make_rlvr_rows.py ifeval google/IFEval ifeval.jsonl

RLVR rows: `messages` (the question as a user turn), `ground_truth` (the final answer), `verifier`.
With --sft the worked solution is kept as an assistant turn (chat data for `rlvr sft`).
"""

import argparse
import json

from rlvr.data import gsm8k_rows, ifeval_rows, math_rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", choices=["gsm8k", "math", "ifeval"])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--limit", type=int)
    p.add_argument("--sft", action="store_true", help="keep the reference solution as the assistant turn")
    p.add_argument("--split", default="train", help="the split of a hub dataset or folder")
    args = p.parse_args()
    if args.dataset == "ifeval":
        rows = ifeval_rows(args.input, args.limit, split=args.split)
    else:
        rows = (gsm8k_rows if args.dataset == "gsm8k" else math_rows)(args.input, args.limit, with_answer=args.sft, split=args.split)
    with open(args.output, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} rows -> {args.output}")


if __name__ == "__main__":
    main()
