"""The credits-per-bucket bar chart of the admin usage page, laid out here and drawn
as inline SVG by the template: no JavaScript, nothing fetched from elsewhere."""

from datetime import date, timedelta
from decimal import Decimal

from billing.money import format_usage

WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 10, 14, 44
MAX_FILLED_BUCKETS = 400  # beyond this, only buckets with usage are drawn
MAX_LABELS = 10
ONE_PLACE = Decimal("0.1")


def next_bucket(start: date, bucket: str) -> date:
    if bucket == "week":
        return start + timedelta(days=7)
    if bucket == "month":
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start + timedelta(days=1)


def _with_empty_buckets(rows: list[dict], bucket: str) -> list[tuple[date, Decimal]]:
    """Buckets without usage drawn as empty slots, so the time axis is not distorted."""
    credits = {row["bucket"]: row["credits"] for row in rows}
    if not rows:
        return []
    filled, current, last = [], rows[0]["bucket"], rows[-1]["bucket"]
    while current <= last and len(filled) <= MAX_FILLED_BUCKETS:
        filled.append((current, credits.get(current, Decimal("0"))))
        current = next_bucket(current, bucket)
    if len(filled) > MAX_FILLED_BUCKETS:
        return [(row["bucket"], row["credits"]) for row in rows]
    return filled


def _coord(value: Decimal) -> str:
    return str(value.quantize(ONE_PLACE))


def credits_chart(by_bucket: list[dict], bucket: str) -> dict:
    points = _with_empty_buckets(by_bucket, bucket)
    plot_w, plot_h = Decimal(WIDTH - LEFT - RIGHT), Decimal(HEIGHT - TOP - BOTTOM)
    top_value = max((credits for _, credits in points), default=Decimal("0"))
    slot = plot_w / len(points) if points else plot_w
    label_every = max(1, -(-len(points) // MAX_LABELS))
    bars = []
    for index, (start, credits) in enumerate(points):
        height = plot_h * credits / top_value if top_value > 0 else Decimal("0")
        x = LEFT + slot * index
        bars.append(
            {
                "x": _coord(x + slot * Decimal("0.1")),
                "y": _coord(TOP + plot_h - height),
                "width": _coord(slot * Decimal("0.8")),
                "height": _coord(height),
                "label_x": _coord(x + slot / 2),
                "start": start,
                "credits": format_usage(credits),
                "show_label": index % label_every == 0,
                "label": start.strftime("%Y-%m") if bucket == "month" else start.isoformat(),
            }
        )
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "baseline": HEIGHT - BOTTOM,
        "label_y": HEIGHT - BOTTOM + 16,
        "max_credits": format_usage(top_value),
        "bars": bars,
        "bucket": bucket,
    }
