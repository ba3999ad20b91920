"""The avatar as its own room participant, the way hosted avatar vendors join.

``run_avatar_participant(url, token, options=...)`` connects with a token whose attribute
``lk.publish_on_behalf`` names the agent, receives the agent's speech over LiveKit data
streams (``DataStreamAudioReceiver``), and publishes the face video and the speech audio
through ``AvatarRunner``. It returns when the agent leaves or the room closes. Another
process can run it with ``python -m live.avatar.runner --url URL --token TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from livekit import rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import DataStreamAudioReceiver

from live.avatar.generator import FaceVideoGenerator, FrameInfo
from live.avatar.options import LocalAvatarOptions, build_renderer
from live.avatar.publish import FaceAvatarRunner
from live.lk_compat import drop_queued_streams

logger = logging.getLogger(__name__)


class _AudioReceiver(DataStreamAudioReceiver):
    """``DataStreamAudioReceiver`` that also drops streams queued but not yet started.

    livekit-agents 1.8.9 discards only the stream being read on ``lk.clear_buffer``; a
    stream whose header arrived just before the RPC (the reader task had not picked it up
    yet, which under load takes a while) would still play in full after the interruption.
    Every stream queued at that moment was sent before the clear, so all of them go.
    """

    def __init__(self, room: rtc.Room, *, sender_identity: str | None) -> None:
        super().__init__(room, sender_identity=sender_identity)
        self.on("clear_buffer", self._drop_queued_streams)

    def _drop_queued_streams(self) -> None:
        dropped = drop_queued_streams(self)
        if dropped:
            logger.debug("dropped queued audio streams on clear_buffer",
                         extra={"streams": dropped})


async def run_avatar_participant(
    url: str,
    token: str,
    *,
    options: LocalAvatarOptions | None = None,
    ready: asyncio.Event | None = None,
    frame_listener: Callable[[FrameInfo], None] | None = None,
) -> None:
    """Join the room, play the agent's speech as a talking face, leave with the agent.

    ``ready`` is set once the runner is started (the agent has joined and tracks will
    publish with the first frame).
    """
    opts = options or LocalAvatarOptions(mode="participant")
    room = rtc.Room()
    stop = asyncio.Event()
    await room.connect(url, token)
    sender = room.local_participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) or None
    log_extra = {"room": room.name, "identity": room.local_participant.identity,
                 "agent": sender}
    logger.info("avatar participant joined", extra=log_extra)

    def _on_left(p: rtc.RemoteParticipant) -> None:
        if (sender and p.identity == sender) or (
            not sender and p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ):
            stop.set()

    room.on("participant_disconnected", _on_left)
    room.on("disconnected", lambda *_: stop.set())
    gen = FaceVideoGenerator(
        renderer=build_renderer(opts), options=opts.avatar_options(), seed=opts.seed,
        frame_listener=frame_listener,
    )
    runner = FaceAvatarRunner(
        room,
        audio_recv=_AudioReceiver(room, sender_identity=sender),
        video_gen=gen,
        options=opts.avatar_options(),
        video_lead=opts.mouth_lead,
    )
    gen.set_av_sync(runner.av_sync)
    try:
        start = asyncio.ensure_future(runner.start())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():  # the agent left before it ever showed up
            start.cancel()
            return
        start.result()
        stopped.cancel()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        logger.info("avatar participant leaving", extra=log_extra)
        await runner.aclose()
        await gen.aclose()
        await room.disconnect()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Join a LiveKit room as the local avatar.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--portrait", type=Path, default=None)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--stats", type=Path, default=None,
                        help="write the count of frames emitted here every second (bench)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    opts = LocalAvatarOptions(portrait=args.portrait, width=args.width, height=args.height,
                              fps=args.fps, mode="participant")
    asyncio.run(_main(args.url, args.token, opts, args.stats))


async def _main(url: str, token: str, opts: LocalAvatarOptions, stats: Path | None) -> None:
    frames = [0]

    def count(_: FrameInfo) -> None:
        frames[0] += 1

    async def write_stats() -> None:
        assert stats is not None
        while True:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stats.write_text, f"{frames[0]}\n")

    writer = asyncio.create_task(write_stats()) if stats else None
    try:
        await run_avatar_participant(url, token, options=opts,
                                     frame_listener=count if stats else None)
    finally:
        if writer is not None:
            writer.cancel()


if __name__ == "__main__":
    main()
