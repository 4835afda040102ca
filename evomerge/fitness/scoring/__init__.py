"""Scoring models on items: batched log-likelihoods and generations (`Scorer`), the answer cache,
and the evaluator a search worker scores candidates with."""
