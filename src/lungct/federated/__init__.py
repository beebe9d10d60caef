"""Federated training across hospitals: non-IID sites by scan group, Flower adapters over lungct's
own training loop (optional extra: ``pip install 'lungct[federated]'``)."""
