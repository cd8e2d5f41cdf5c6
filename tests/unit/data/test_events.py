import pandas as pd

from components.data.events import event_seconds, event_times


def _frame(users, timestamps, positions):
    return pd.DataFrame({"user_id": users, "timestamp": pd.array(timestamps, dtype="Int64"), "position": positions})


def test_same_day_events_are_ordered_by_position():
    day = 1_318_896_000
    frame = _frame(["a", "a", "a"], [day, day, day + 86400], [0, 1, 2])
    assert event_seconds(frame).tolist() == [day, day + 1, day + 86400 + 2]


def test_missing_timestamps_follow_the_neighbours_and_keep_the_order():
    frame = _frame(["a", "a", "a", "a", "b", "b"], [None, 1000, None, 5000, None, None], [0, 1, 2, 3, 1, 0])
    seconds = event_seconds(frame).tolist()
    assert seconds == [1000, 1001, 1002, 5003, 1, 0]
    user_a = seconds[:4]
    assert user_a == sorted(user_a) and len(set(user_a)) == 4


def test_rows_keep_their_input_order_and_times_are_utc():
    frame = _frame(["b", "a"], [200, 100], [0, 0])
    assert event_seconds(frame).tolist() == [200, 100]
    assert str(event_times(frame).dt.tz) == "UTC"
