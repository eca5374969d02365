"""``bench.pipeline`` counts model time once when the expert and VILA-M3 overlap (the expert beside turn 1)."""

import pytest

from bench.pipeline import model_seconds


@pytest.mark.parametrize(
    ("expert_window", "vlm_window", "expected"),
    [
        ([10.0, 12.0], [12.5, 15.0], 4.5),  # one after the other
        ([10.0, 13.0], [10.1, 15.0], 5.0),  # the expert beside turn 1
        ([10.0, 11.0], [10.0, 15.0], 5.0),  # the consultation waited for the expert: within its window
        ([10.2, 16.0], [10.0, 12.0], 6.0),  # the expert outlasts the consultation
    ],
)
def test_model_time_is_the_union_of_the_two_windows(expert_window, vlm_window, expected):
    expert = {"elapsed_s": expert_window[1] - expert_window[0], "model_window": expert_window}
    vlm = {"model_s": vlm_window[1] - vlm_window[0], "model_window": vlm_window}
    assert model_seconds(expert, vlm) == pytest.approx(expected)


def test_results_without_windows_fall_back_to_the_sum():
    assert model_seconds({"elapsed_s": 1.5}, {"model_s": 2.0}) == pytest.approx(3.5)
