"""grain input pipelines, one module per modality, over the files scripts/prepare_data.py writes."""
