"""Mouse teleoperation of Push-T in a pygame window, recording demonstrations at 10 Hz.

As in the original collection tool, the agent (blue disc) does nothing until it is grabbed: hover
over it or click on it, and from then on it follows the mouse cursor (the cursor is the action, an
absolute target). Keys:

- ``S``: save the episode now and start the next one (a success saves by itself);
- ``R``: discard the episode and retry the same start;
- ``Space``: pause / resume;
- ``Q``, ``Esc`` or closing the window: quit (an unsaved episode is discarded).

Recording pauses by itself once the cursor has stayed still for ``IDLE_SECONDS`` (the agent has
settled on its target by then), so that a person thinking or resting adds no constant-action steps;
the next mouse motion resumes it. A panel under the scene shows the instructions and the state
(recording, waiting to be grabbed, paused, idle; episodes saved, step, coverage), also in the
window title. :class:`TeleopSession` runs one control step per :meth:`~TeleopSession.tick`, which
is how the tests drive it headless (``SDL_VIDEODRIVER=dummy``, with synthetic mouse and key events
posted to pygame's queue).

The session only produces what the person did: every saved episode goes to the caller's ``on_save``
callback as a dict of numpy arrays (see :mod:`envs.pusht.recording`); storing it (e.g. into a zarr
dataset, as ``dpolicy collect --teleop`` does) is the caller's business.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from envs.pusht.env import PushTEnv
from envs.pusht.geometry import WORKSPACE_SIZE
from envs.pusht.recording import EpisodeRecorder
from envs.pusht.render import render_state
from envs.pusht.sim import AGENT_RADIUS

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
try:
    import pygame  # (after the variable that silences its greeting)
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("mouse teleoperation needs pygame: pip install -e '.[teleop]'") from err

#: Control rate of the recording (steps per second), as the original tool and the human data.
CONTROL_HZ = 10
#: The agent is grabbed by a click or hover within this many px (world units) of its centre.
GRAB_DISTANCE = AGENT_RADIUS + 5.0
#: Seconds without cursor motion after which recording pauses until the mouse moves again.
IDLE_SECONDS = 1.0
#: Height of the instruction panel under the scene, in window px at scale 1.
PANEL_HEIGHT = 72
PANEL_COLOR = (30, 30, 30)
TEXT_COLOR = (235, 235, 235)
ALERT_COLOR = (255, 200, 60)
#: Printed when a session starts.
INSTRUCTIONS = ("Push the T onto the green target. Hover over or click the blue agent to grab it; it then "
                "follows the mouse.\nS: save the episode (a success saves itself)  R: discard and retry  "
                "Space: pause  Q/Esc: quit")


class TeleopUnavailable(RuntimeError):
    """The teleoperation window cannot be opened (no display)."""


class TeleopSession:
    """A pygame window in which a person pushes the T with the mouse; one control step per :meth:`tick`.

    Args:
        on_save: called as ``on_save(reset_seed, episode)`` with the recorded arrays of every saved
            episode (``state``, ``action``, ``keypoint``, ``n_contacts`` and optionally ``img``).
        seeds: environment reset seeds for the successive episodes (a retry reuses the current one).
        images: also record 96 x 96 frames.
        scale: window size relative to the 512 px workspace.
        recorder: records the steps of the current episode; any object with ``clear()``,
            ``step(env, action)`` (steps ``env`` and returns what ``env.step`` returned), ``len()`` and
            ``episode()`` (the arrays passed to ``on_save``). Default: an
            :class:`~envs.pusht.recording.EpisodeRecorder` (with ``images``).
    """

    def __init__(self, on_save: Callable[[int, dict], None], seeds: Iterator[int], images: bool = False,
                 scale: float = 1.0, recorder=None):
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.on_save = on_save
        self.seeds = seeds
        self.scale = float(scale)
        self.size = max(64, round(WORKSPACE_SIZE * self.scale))
        self.panel_height = max(24, round(PANEL_HEIGHT * self.scale))
        try:
            pygame.display.init()  # the display alone: no audio, no fonts (the panel text is drawn with OpenCV)
            self.screen = pygame.display.set_mode((self.size, self.size + self.panel_height))
        except pygame.error as err:
            raise TeleopUnavailable(f"cannot open the teleoperation window ({err}); run it on a machine "
                                    "with a display (SDL_VIDEODRIVER=dummy gives a headless window for "
                                    "tests)") from err
        self.env = PushTEnv(obs_type="state")
        self.recorder = EpisodeRecorder(images) if recorder is None else recorder
        self.saved = 0
        self.paused = False
        self.cursor: np.ndarray | None = None  # world px
        self.idle_ticks = round(IDLE_SECONDS * CONTROL_HZ)
        self.still_ticks = 0  # ticks since the cursor last moved
        self._new_episode(next(self.seeds))

    # ------------------------------------------------------------------ episodes
    def _new_episode(self, seed: int) -> None:
        self.seed = int(seed)
        self.env.reset(seed=self.seed)
        self.recorder.clear()
        self.grabbed = False
        self.coverage = self.env.sim.coverage()

    def save(self) -> None:
        """Save the current episode (if it has steps) and start the next one."""
        if len(self.recorder):
            self.on_save(self.seed, self.recorder.episode())
            self.saved += 1
        self._new_episode(next(self.seeds))

    def retry(self) -> None:
        """Discard the current episode and restart from the same reset."""
        self._new_episode(self.seed)

    # ------------------------------------------------------------------ the loop
    def _to_world(self, pos) -> np.ndarray:
        return np.asarray(pos, dtype=np.float64) / (self.size / WORKSPACE_SIZE)

    def _near_agent(self, world: np.ndarray) -> bool:
        return float(np.linalg.norm(world - self.env.sim.agent_pos)) <= GRAB_DISTANCE

    def handle_events(self) -> bool:
        """Process pending pygame events; returns False when the user quits."""
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                return False
            if event.type == pygame.KEYDOWN:
                if event.key in (pygame.K_q, pygame.K_ESCAPE):
                    return False
                if event.key == pygame.K_s:
                    self.save()
                elif event.key == pygame.K_r:
                    self.retry()
                elif event.key == pygame.K_SPACE:
                    self.paused = not self.paused
            elif event.type in (pygame.MOUSEMOTION, pygame.MOUSEBUTTONDOWN):
                cursor = self._to_world(event.pos)
                if self.cursor is None or not np.array_equal(cursor, self.cursor):
                    self.still_ticks = -1  # counted up to 0 by this tick
                self.cursor = cursor
                if not self.grabbed and self._near_agent(self.cursor):
                    self.grabbed = True
        return True

    def tick(self) -> bool:
        """Handle input, take one control step toward the cursor when grabbed, redraw.

        Returns False when the user quits. A step that reaches coverage > 0.95 saves the episode.
        """
        if not self.handle_events():
            return False
        self.still_ticks += 1
        if self.grabbed and not self.paused and not self.idle and self.cursor is not None:
            _, _, terminated, _, info = self.recorder.step(self.env, self.cursor)
            self.coverage = info["coverage"]
            if terminated:
                self.save()
        self.draw()
        return True

    @property
    def idle(self) -> bool:
        """True while recording waits for the cursor to move again (it has been still too long)."""
        return self.grabbed and self.still_ticks >= self.idle_ticks

    def status(self) -> str:
        """What the session is doing, as the panel says it."""
        if self.paused:
            return "PAUSED - press Space to go on"
        if not self.grabbed:
            return "hover over or click the blue agent to start"
        if self.idle:
            return "IDLE - recording paused, move the mouse to go on"
        return "RECORDING - push the T onto the green target"

    def panel_lines(self) -> list[str]:
        """The three lines of the panel: state, counters, keys."""
        return [self.status(),
                f"saved {self.saved}   seed {self.seed}   step {len(self.recorder)}   coverage {self.coverage:.2f}",
                "S save   R retry   Space pause   Q quit"]

    def panel(self) -> np.ndarray:
        """The instruction panel as an RGB image (panel_height, size, 3)."""
        image = np.empty((self.panel_height, self.size, 3), dtype=np.uint8)
        image[:] = PANEL_COLOR
        line_height = self.panel_height / 3
        font_scale = 0.45 * self.scale
        for i, text in enumerate(self.panel_lines()):
            color = ALERT_COLOR if i == 0 and (self.paused or self.idle or not self.grabbed) else TEXT_COLOR
            baseline = round((i + 0.75) * line_height)
            cv2.putText(image, text, (round(6 * self.scale), baseline), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                        color, 1, cv2.LINE_AA)
        return image

    def draw(self) -> None:
        target = self.cursor if self.grabbed else None
        frame = render_state(self.env.sim.get_state(), self.size, target=target)
        window = np.concatenate([frame, self.panel()], axis=0)
        pygame.surfarray.blit_array(self.screen, window.transpose(1, 0, 2))
        pygame.display.flip()
        pygame.display.set_caption(f"Push-T teleop | {self.status()} | saved {self.saved}")

    def run(self, fps: float = CONTROL_HZ) -> int:
        """Run until the user quits, at ``fps`` control steps per second; returns the episodes saved."""
        clock = pygame.time.Clock()
        try:
            while self.tick():
                clock.tick(fps)
        finally:
            self.close()
        return self.saved

    def close(self) -> None:
        pygame.display.quit()
