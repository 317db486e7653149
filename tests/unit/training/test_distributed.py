import pytest

from pipelines.core.errors import ConfigError
from pipelines.training.distributed import Dist, share


@pytest.mark.parametrize("env, expected", [
    ({}, Dist()),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29600",
      "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2"},
     Dist(1, 2, 1, ("10.0.0.5", 29600), True, 2)),
])
def test_dist_from_torchrun_environment(env, expected):
    assert Dist.from_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "must be integers"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK 2 is outside WORLD_SIZE 2"),
    ({"WORLD_SIZE": "0"}, "outside WORLD_SIZE 0"),
])
def test_bad_torchrun_environment_is_one_line(env, message):
    with pytest.raises(ConfigError, match=message):
        Dist.from_env(env)


@pytest.mark.parametrize("members, world, shares", [
    ([0, 1, 2, 3, 4], 2, [[0, 2, 4], [1, 3]]),
    ([0], 2, [[0], []]),
    ([0, 1, 2], 1, [[0, 1, 2]]),
])
def test_every_member_goes_to_exactly_one_rank(members, world, shares):
    assert [share(members, Dist(r, world)) for r in range(world)] == shares
