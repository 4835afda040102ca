"""Deciding what is scored and what is picked: the evaluation plan, the promotion rungs and the
paired test."""
