"""The re-ranking service's logic, free of BentoML: request checks (request.py), features, prompts,
batched decoding and the fallback (engine.py), batching across requests (batching.py), the bundle
the service loads (bundle.py) and packaging into the BentoML model store and a Bento (package.py).
The BentoML edge is ``deploy/service.py``."""
