"""An example pydantic model for notebook 01's `schema_path` (``batchkit.examples:ReviewInsight``).

It goes with `data/reviews.csv` (columns ``review_id, product, review``); see "Your own data" in
the README. Its constraints (a rating from 1 to 5, short texts, at most three pros and cons) are
the kind a target's strict mode drops: they are checked again when the results are read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ReviewInsight(BaseModel):
    """What to read out of one product review."""

    rating: int = Field(ge=1, le=5, description="1 (bad) to 5 (excellent)")
    sentiment: Literal["positive", "mixed", "negative"]
    would_recommend: bool
    pros: list[str] = Field(max_length=3, description="at most three short points")
    cons: list[str] = Field(max_length=3, description="at most three short points")
    summary: str = Field(max_length=120)
