"""AvatarRunner with explicit video encoding for the rendered face.

LiveKit's runner publishes the video with default options: simulcast layers sized by preset,
whose frame rate and bitrate do not follow the avatar's. A talking face needs its full frame
rate (lips) more than spatial layers, so it is published as one layer at the configured fps.
"""

from __future__ import annotations

from livekit import rtc
from livekit.agents.voice.avatar import AvatarOptions, AvatarRunner

# bits per pixel per frame: enough for a mostly static face with a moving mouth
BITS_PER_PIXEL = 0.2


def video_encoding(options: AvatarOptions) -> rtc.VideoEncoding:
    bitrate = int(options.video_width * options.video_height * options.video_fps * BITS_PER_PIXEL)
    return rtc.VideoEncoding(max_bitrate=max(300_000, bitrate), max_framerate=options.video_fps)


class FaceAvatarRunner(AvatarRunner):
    """Publishes audio as LiveKit's runner does, and video as one layer at the avatar's fps."""

    def __init__(self, room: rtc.Room, *, options: AvatarOptions, **kwargs: object) -> None:
        super().__init__(room, options=options, **kwargs)  # type: ignore[arg-type]
        self._face_options = options

    async def _publish_track(self) -> None:  # LiveKit 1.8.x private hook, same steps
        async with self._lock:
            await self._room_connected_fut
            audio_track = rtc.LocalAudioTrack.create_audio_track("avatar_audio", self._audio_source)
            self._audio_publication = await self._room.local_participant.publish_track(
                audio_track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )
            await self._audio_publication.wait_for_subscription()
            video_track = rtc.LocalVideoTrack.create_video_track("avatar_video", self._video_source)
            self._video_publication = await self._room.local_participant.publish_track(
                video_track,
                rtc.TrackPublishOptions(
                    source=rtc.TrackSource.SOURCE_CAMERA,
                    simulcast=False,
                    video_encoding=video_encoding(self._face_options),
                ),
            )
