"""Item banks: the item schema, importers (BIG-bench, MMLU, HumanEval, lm-eval tasks), suites, and
code banks with the sandbox their tests run in."""
