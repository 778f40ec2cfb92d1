"""The calculator tool in a growing prompt (issue 15): accuracy on 20
arithmetic word problems of examples/agent.lm's `solve` query (a
Thought/Action/Input/Observation loop with `calc`) against the same model
answering the same problems directly, without the tool, on the bundled model.

    python bench/agent.py [--json] [--n 20]

Both arms decode greedily; the figure is exact-match accuracy of the int
answer. A small model writes poor expressions, so the tool helps only as much
as the expressions it writes are right: the bench reports how many answers
came from an expression whose calc result equals the answer, too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROBLEMS = [
    ("Tom has 3 apples and buys 4 more, then eats 2. How many are left?", 5),
    ("A box holds 12 eggs. How many eggs are in 3 boxes?", 36),
    ("Sara had 20 stickers and gave away 7. How many does she have now?", 13),
    ("A bus has 15 people. 6 get off and 4 get on. How many are on the bus?", 13),
    ("Each pack has 8 pencils. How many pencils are in 5 packs?", 40),
    ("There are 24 cookies shared equally by 6 children. How many does each child get?", 4),
    ("Ben runs 3 km a day for 7 days. How many km does he run?", 21),
    ("A shop sold 45 apples in the morning and 38 in the afternoon. How many in total?", 83),
    ("Lisa has 50 dollars and spends 18. How much is left?", 32),
    ("A garden has 9 rows of 9 plants. How many plants are there?", 81),
    ("100 candies are split into 4 equal bags. How many candies per bag?", 25),
    ("Max reads 12 pages a day. How many pages does he read in 6 days?", 72),
    ("A class has 14 boys and 17 girls. How many children are in the class?", 31),
    ("A farmer has 60 eggs and sells 3 dozen. How many eggs are left?", 24),
    ("Tickets cost 7 dollars each. How much do 9 tickets cost?", 63),
    ("Anna had 35 marbles, lost 9, then found 5. How many does she have?", 31),
    ("A train travels 80 km an hour for 3 hours. How far does it go?", 240),
    ("There are 56 chairs in 7 equal rows. How many chairs are in each row?", 8),
    ("Tim saves 15 dollars a week for 4 weeks, then spends 22. How much is left?", 38),
    ("A baker makes 6 trays of 11 rolls. How many rolls does he make?", 66),
]

DIRECT = """
model base = default
query direct(q: str) using base {
    system "Solve the problem. Give only the number."
    user "{q}"
    assistant "Answer: [answer]"
    where answer is int
}
flow { r = direct(question) emit answer = r.answer }
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n", type=int, default=len(PROBLEMS))
    args = ap.parse_args()

    import lmlang
    from lmlang.tools import calc

    probs = PROBLEMS[: args.n]
    rows = [{"question": q} for q, _ in probs]
    agent = lmlang.compile_file(Path(__file__).resolve().parent.parent / "examples" / "agent.lm")
    direct = lmlang.compile(DIRECT.replace("flow {", "input question: str\nflow {"))
    t0 = time.perf_counter()
    with_tool = agent.run_batch(rows, errors="return")
    t1 = time.perf_counter()
    without = direct.run_batch(rows, errors="return")
    t2 = time.perf_counter()

    def right(out, want) -> bool:
        return isinstance(out, dict) and out.get("answer") == want

    tool_ok = sum(right(o, w) for o, (_, w) in zip(with_tool, probs))
    direct_ok = sum(right(o, w) for o, (_, w) in zip(without, probs))
    from_calc = sum(
        isinstance(o, dict) and any(calc(e) == str(o["answer"]) for e in o.get("expressions", [])) for o in with_tool
    )
    report = {
        "problems": len(probs),
        "accuracy_with_calc": tool_ok / len(probs),
        "accuracy_without_tool": direct_ok / len(probs),
        "answers_equal_to_a_calc_result": from_calc,
        "errors_with_calc": sum(isinstance(o, Exception) for o in with_tool),
        "seconds_with_calc": round(t1 - t0, 1),
        "seconds_without_tool": round(t2 - t1, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:32} {v}")


if __name__ == "__main__":
    main()
