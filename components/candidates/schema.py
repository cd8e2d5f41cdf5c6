"""The re-ranking example contract (DESIGN.md, "Re-ranking example"): one row of examples.parquet.

| column               | type            | meaning                                                        |
|----------------------|-----------------|----------------------------------------------------------------|
| user_id              | str             |                                                                |
| split                | str             | train / valid / test (test = last item, valid = second last)   |
| target               | str             | the item the user interacted with next                         |
| target_position      | int             | its position in the user's sequence                            |
| event_seconds        | int             | its event time (components.data.events), Unix seconds          |
| history              | list[str]       | earlier item ids, oldest first, at most H                      |
| history_event_seconds| list[int]       | their event times; every one is < event_seconds                |
| candidates           | list[str]       | N distinct item ids in pre-rank order (best first)             |
| target_pre_rank      | int             | 1-based rank of the target in ``candidates``                   |
| co_purchases         | list[int]       | per candidate: other users who bought it with a history item,  |
|                      |                 | summed over distinct history items (training split only)      |
| in_test_sample       | bool            | test example of a user in the fixed, seeded test sample        |
"""

EXAMPLE_COLUMNS = [
    "user_id",
    "split",
    "target",
    "target_position",
    "event_seconds",
    "history",
    "history_event_seconds",
    "candidates",
    "target_pre_rank",
    "co_purchases",
    "in_test_sample",
]
SPLITS = ("train", "valid", "test")
