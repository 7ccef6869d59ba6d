"""Mouse teleoperation, driven headless: SDL's dummy video driver and synthetic events in pygame's queue."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from dpolicy.collect import DemoDataset  # noqa: E402
from envs.pusht.expert import ScriptedExpert  # noqa: E402
from envs.pusht.sim import PushTSim  # noqa: E402
from envs.pusht.teleop import TeleopSession  # noqa: E402


@pytest.fixture
def saved():
    return []


@pytest.fixture
def session(saved):
    s = TeleopSession(lambda seed, episode: saved.append((seed, episode)), iter([21, 22, 23, 24]), scale=0.5)
    yield s
    s.close()


def post_mouse(kind, world_xy, scale=0.5):
    pixel = tuple(int(round(v * scale)) for v in world_xy)
    if kind == "down":
        pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=pixel, button=1))
    else:
        pygame.event.post(pygame.event.Event(pygame.MOUSEMOTION, pos=pixel, rel=(0, 0), buttons=(0, 0, 0)))
    return np.array(pixel) / scale


def post_key(key):
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))


def test_agent_waits_until_grabbed_then_follows_the_cursor(session, saved):
    start = session.env.sim.get_state()
    post_mouse("move", start[:2] + 200.0)  # far from the agent: nothing happens
    assert session.tick() and not session.grabbed and len(session.recorder) == 0
    np.testing.assert_array_equal(session.env.sim.get_state(), start)
    post_mouse("move", start[:2] + 6.0)  # hovering over the agent grabs it
    session.tick()
    assert session.grabbed and len(session.recorder) == 1
    targets = []
    for k in range(1, 4):
        targets.append(post_mouse("move", start[:2] + (10.0 * k, 4.0 * k)))
        session.tick()
    # Several motions queued within one tick: the latest position is the target.
    post_mouse("move", start[:2] + (50.0, 0.0))
    targets.append(post_mouse("move", start[:2] + (40.0, 16.0)))
    session.tick()
    episode = session.recorder.episode()
    assert len(episode["action"]) == 5
    np.testing.assert_allclose(episode["action"][1:], targets)
    np.testing.assert_allclose(episode["state"][0], start, atol=1e-4)
    assert not saved


def test_keys_save_retry_pause_and_quit(session, saved):
    agent = session.env.sim.agent_pos
    post_mouse("down", agent)  # clicking on the agent grabs it
    for k in range(3):
        post_mouse("move", agent + (0.0, 8.0 * k))
        session.tick()
    post_key(pygame.K_SPACE)  # pause: no steps are recorded
    post_mouse("move", agent + (0.0, 40.0))
    session.tick()
    session.tick()
    assert len(session.recorder) == 3
    post_key(pygame.K_SPACE)
    session.tick()
    assert len(session.recorder) == 4
    post_key(pygame.K_s)  # save: the 4 steps go out, the next start (seed 22) begins
    session.tick()
    assert [seed for seed, _ in saved] == [21] and saved[0][1]["action"].shape == (4, 2)
    assert session.seed == 22 and not session.grabbed and len(session.recorder) == 0

    post_mouse("down", session.env.sim.agent_pos)
    session.tick()
    session.tick()
    state_before = session.env.sim.get_state()
    post_key(pygame.K_r)  # retry: discard, same start again
    session.tick()
    assert session.seed == 22 and len(session.recorder) == 0 and len(saved) == 1
    sim = PushTSim()
    sim.reset_legacy(22)
    np.testing.assert_allclose(session.env.sim.get_state(), sim.get_state())
    assert not np.allclose(state_before, sim.get_state())

    post_key(pygame.K_q)
    assert session.tick() is False
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    assert session.tick() is False


def test_a_successful_episode_saves_itself_into_the_dataset(tmp_path):
    """Steer with the scripted expert through the mouse (integer pixels) until the T is placed."""
    dataset = DemoDataset(tmp_path / "teleop.zarr", {"source": "teleop test"})
    session = TeleopSession(dataset.add_episode, iter([7, 8]), scale=1.0)
    expert = ScriptedExpert(seed=0)
    try:
        post_mouse("down", session.env.sim.agent_pos, scale=1.0)
        posted = []
        for _ in range(300):
            if dataset.n_episodes:
                break
            if posted:  # the expert chooses from the state the click or previous motion left
                posted.append(post_mouse("move", expert.act(session.env.sim.get_full_state()), scale=1.0))
            else:
                posted.append(np.round(session.env.sim.agent_pos))
            session.tick()
    finally:
        session.close()
    assert dataset.n_episodes == 1 and dataset.episode_seeds == [7]
    assert session.seed == 8
    episode = dataset.buffer.get_episode(0)
    np.testing.assert_allclose(episode["action"], np.array(posted))
    # Replaying the recorded actions from the start reaches coverage > 0.95 at the last step.
    sim = PushTSim()
    sim.reset_legacy(7)
    for action in episode["action"]:
        assert sim.coverage() <= 0.95
        sim.step(action.astype(np.float64))
    assert sim.coverage() > 0.95


def test_collect_teleop_appends_to_a_dataset_and_skips_used_seeds(tmp_path, monkeypatch):
    from dpolicy.collect import collect_teleop

    def scripted_run(self, fps=10):  # instead of a person: grab, two steps, save, quit
        post_mouse("down", self.env.sim.agent_pos, scale=self.scale)
        self.tick()
        self.tick()
        post_key(pygame.K_s)
        self.tick()
        post_key(pygame.K_q)
        assert self.tick() is False
        self.close()
        return self.saved

    monkeypatch.setattr(TeleopSession, "run", scripted_run)
    out = tmp_path / "teleop.zarr"
    collect_teleop(out, seed=5, scale=0.25).close()
    dataset = collect_teleop(out, seed=5, scale=0.25)
    assert dataset.episode_seeds == [5, 6]
    assert dataset.buffer.episode_lengths.tolist() == [2, 2]
    dataset.close()


def test_recording_pauses_while_the_mouse_stays_still_and_resumes_when_it_moves(session):
    agent = session.env.sim.agent_pos.copy()
    post_mouse("down", agent)
    session.tick()
    post_mouse("move", agent + (20.0, 0.0))
    session.tick()
    assert session.status().startswith("RECORDING")
    for _ in range(3 * session.idle_ticks):  # the person rests: no motion events at all
        session.tick()
    # the steps until the idle threshold are kept (the agent settles on its target), none after it
    assert len(session.recorder) == session.idle_ticks + 1 and session.idle
    assert session.status().startswith("IDLE")
    state = session.env.sim.get_state()
    session.tick()
    np.testing.assert_array_equal(session.env.sim.get_state(), state)  # the scene waits too
    post_mouse("move", agent + (20.0, 1.0))  # even a small motion resumes recording
    session.tick()
    assert not session.idle and len(session.recorder) == session.idle_ticks + 2
    episode = session.recorder.episode()
    np.testing.assert_allclose(episode["action"][-1], np.round((agent + (20.0, 1.0)) * 0.5) / 0.5)


def test_the_panel_under_the_scene_shows_the_state_and_the_keys(session):
    width, height = session.screen.get_size()
    assert (width, height) == (session.size, session.size + session.panel_height)
    assert session.panel_lines()[0].startswith("hover over or click the blue agent")
    assert session.panel_lines()[2] == "S save   R retry   Space pause   Q quit"
    waiting = session.panel()
    assert waiting.shape == (session.panel_height, session.size, 3)
    assert (waiting != waiting[0, 0]).any()  # text drawn on the background
    post_key(pygame.K_SPACE)
    session.tick()
    assert session.panel_lines()[0].startswith("PAUSED") and not np.array_equal(session.panel(), waiting)
    assert "PAUSED" in pygame.display.get_caption()[0]
    drawn = pygame.surfarray.array3d(session.screen).transpose(1, 0, 2)
    np.testing.assert_array_equal(drawn[session.size:], session.panel())
