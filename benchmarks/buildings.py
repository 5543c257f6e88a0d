"""The walkthrough's three building requests, and a check of how right an answer is.

Shared by the engine benchmarks in this folder.
"""

from __future__ import annotations

import json
import re
from typing import Any

SYSTEM_PROMPT = "You are an AI assistant that provides facts about tall buildings."

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "BuildingName": {"type": "string"},
        "HeightInFeet": {"type": "string"},
        "City": {"type": "string"},
        "Country": {"type": "string"},
    },
    "required": ["BuildingName", "HeightInFeet", "City", "Country"],
    "additionalProperties": False,
}

#: The same fields with the height as an integer: the schema the parse and service benchmarks type
#: their answers by (an integer column, as a user's numeric field would be).
INTEGER_HEIGHT_SCHEMA: dict[str, Any] = {
    **SCHEMA, "properties": {**SCHEMA["properties"], "HeightInFeet": {"type": "integer"}},
}

# custom_id -> (user prompt, name word, accepted cities, accepted countries, height in ft, height in m)
BUILDINGS: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...], float, float]] = {
    "empire-state": (
        "Provide info about the Empire State Building",
        "empire",
        ("new york",),
        ("united states", "usa", "us", "u.s.", "u.s.a.", "america"),
        1454.0,  # to the tip; 1,250 ft to the roof
        443.0,
    ),
    "shard": (
        "Provide info about the Shard in London",
        "shard",
        ("london",),
        ("united kingdom", "uk", "england", "great britain", "britain"),
        1016.0,
        310.0,
    ),
    "burj-khalifa": (
        "Provide info about the Burj Khalifa",
        "burj",
        ("dubai",),
        ("united arab emirates", "uae", "u.a.e."),
        2717.0,
        828.0,
    ),
}
ROOF_HEIGHTS_FT = {"empire-state": 1250.0}


def request_body(custom_id: str) -> dict[str, Any]:
    """The strict-schema Chat Completions body for one building (``custom_id``: a key of :data:`BUILDINGS`)."""
    return {
        "model": "gpt-4o-batch",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": BUILDINGS[custom_id][0]},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "building", "schema": SCHEMA, "strict": True},
        },
    }


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def field_scores(custom_id: str, content: str | None) -> dict[str, bool]:
    """Which of the four fields are right (name, height within 5 % in ft or m, city, country)."""
    _, word, cities, countries, feet, metres = BUILDINGS[custom_id]
    try:
        answer = json.loads(content or "")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"BuildingName": False, "HeightInFeet": False, "City": False, "Country": False}
    heights = [feet, metres] + ([ROOF_HEIGHTS_FT[custom_id]] if custom_id in ROOF_HEIGHTS_FT else [])

    def close(value: float) -> bool:
        return any(abs(value - h) <= 0.05 * h for h in heights)

    country = str(answer.get("Country", "")).strip().lower().rstrip(".,")
    return {
        "BuildingName": word in str(answer.get("BuildingName", "")).lower(),
        "HeightInFeet": any(close(n) for n in _numbers(str(answer.get("HeightInFeet", "")))),
        "City": any(str(answer.get("City", "")).strip().lower().rstrip(".,").startswith(c) for c in cities),
        "Country": country in countries,
    }


# Fifty more prompts for the same schema: 25 structures, each asked two ways. Generated, not
# sampled, so every run sends the same requests in the same order.
_STRUCTURES = (
    "Taipei 101", "the Petronas Towers", "the Willis Tower", "One World Trade Center", "the Chrysler Building",
    "the CN Tower", "the Eiffel Tower", "the Shanghai Tower", "the Lotte World Tower", "the Abraj Al-Bait Clock Tower",
    "the Ping An Finance Centre", "Merdeka 118", "the Lakhta Center", "the Tokyo Skytree", "the Canton Tower",
    "the Jin Mao Tower", "the International Commerce Centre in Hong Kong", "the Gherkin in London",
    "the Transamerica Pyramid", "the Space Needle", "Central Park Tower", "the Q1 tower on the Gold Coast",
    "the Commerzbank Tower in Frankfurt", "the Torre Latinoamericana", "the Ostankino Tower",
)
_ASKS = ("Provide info about {}", "How tall is {}, and in which city and country does it stand?")


def generated_prompts() -> list[tuple[str, str]]:
    """``(custom_id, user prompt)`` for the 50 generated requests (structure-major order)."""
    return [
        (f"gen-{2 * i + j:02d}", ask.format(name))
        for i, name in enumerate(_STRUCTURES)
        for j, ask in enumerate(_ASKS)
    ]


def prompt_body(prompt: str) -> dict[str, Any]:
    """The walkthrough's strict-schema Chat Completions body with another user prompt."""
    body = request_body("shard")
    body["messages"][1]["content"] = prompt
    return body
