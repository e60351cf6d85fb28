"""One ``APIRouter`` per resource: datasets, jobs, models, recommend, items, health (+ metrics)."""
