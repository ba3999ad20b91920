// Join page client: joins the LiveKit room with the microphone, shows the avatar's video and
// live captions. Captions arrive as LiveKit text streams on topic "lk.transcription"
// (livekit-agents 1.8: attributes lk.segment_id, lk.transcription_final,
// lk.transcribed_track_id). Text only ever reaches the DOM through textContent.
import {
  ConnectionState,
  Participant,
  ParticipantKind,
  RemoteParticipant,
  RemoteTrack,
  Room,
  RoomEvent,
  Track,
  type TextStreamReader,
} from "livekit-client";

const TOPIC_TRANSCRIPTION = "lk.transcription";
const ATTR_SEGMENT_ID = "lk.segment_id";
const ATTR_FINAL = "lk.transcription_final";
const ATTR_AGENT_STATE = "lk.agent.state";
const CAPTION_HIDE_MS = 6000;

type JoinState = "connecting" | "connected" | "reconnecting" | "disconnected" | "error";

function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el;
}

function setJoinState(state: JoinState, text: string): void {
  document.body.dataset.joinState = state;
  const pill = $("conn-pill");
  pill.textContent = state;
  pill.className = "pill " + (state === "connected" ? "active" : state === "connecting" || state === "reconnecting" ? "pending" : "failed");
  $("join-state").textContent = text;
}

class Captions {
  private readonly overlay = $("captions");
  private readonly log = $("caption-log");
  private readonly rows = new Map<string, HTMLElement>();
  private hideTimer: number | undefined;

  constructor(private readonly localIdentity: () => string) {}

  /**
   * Show the latest text of a segment (callers pass the text accumulated so far).
   * `done`: its stream closed (for the agent's delta streams: the segment is complete);
   * `final`: the STT marked the user's transcript final.
   */
  update(segmentId: string, speaker: string, text: string, final: boolean, done: boolean): void {
    const isUser = speaker === this.localIdentity();
    let row = this.rows.get(segmentId);
    if (!row) {
      row = document.createElement("div");
      row.className = "msg " + (isUser ? "user" : "agent");
      row.dataset.segment = segmentId;
      const av = document.createElement("div");
      av.className = "av";
      av.textContent = isUser ? "You" : "AI";
      const body = document.createElement("div");
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = isUser ? "You" : "Agent";
      const bubble = document.createElement("div");
      bubble.className = "bubble";
      body.append(meta, bubble);
      row.append(av, body);
      document.getElementById("caption-empty")?.remove();
      this.log.append(row);
      this.rows.set(segmentId, row);
    }
    const bubble = row.querySelector(".bubble") as HTMLElement;
    bubble.textContent = text;
    row.dataset.final = String(final);
    row.dataset.done = String(done);
    this.log.scrollTop = this.log.scrollHeight;
    if (!isUser) this.showOverlay(text);
  }

  private showOverlay(text: string): void {
    const span = document.createElement("span");
    span.textContent = text;
    this.overlay.replaceChildren(span);
    window.clearTimeout(this.hideTimer);
    this.hideTimer = window.setTimeout(() => this.overlay.replaceChildren(), CAPTION_HIDE_MS);
  }
}

function isAgent(p: Participant): boolean {
  return p.kind === ParticipantKind.AGENT || p.attributes?.[ATTR_AGENT_STATE] !== undefined;
}

async function main(): Promise<void> {
  const cfg = $("join-config").dataset;
  const url = cfg.url ?? "";
  const token = cfg.token ?? "";
  const back = cfg.back ?? "/";
  const room = new Room({ adaptiveStream: true, dynacast: true });
  (window as unknown as { __room: Room }).__room = room;
  const captions = new Captions(() => room.localParticipant.identity);
  const stage = $("stage");
  const muteBtn = $("mute") as HTMLButtonElement;
  const leaveBtn = $("leave") as HTMLButtonElement;

  room.registerTextStreamHandler(TOPIC_TRANSCRIPTION, async (reader: TextStreamReader, from) => {
    const attrs = reader.info.attributes ?? {};
    const segmentId = attrs[ATTR_SEGMENT_ID] ?? reader.info.id;
    let text = "";
    for await (const chunk of reader) {
      text += chunk;
      captions.update(segmentId, from.identity, text, false, false);
    }
    captions.update(segmentId, from.identity, text, attrs[ATTR_FINAL] === "true", true);
  });

  room.on(RoomEvent.TrackSubscribed, (track: RemoteTrack, _pub, participant: RemoteParticipant) => {
    if (track.kind === Track.Kind.Video) {
      const video = track.attach() as HTMLVideoElement;
      video.dataset.participant = participant.identity;
      video.muted = true;
      video.playsInline = true;
      $("placeholder").hidden = true;
      stage.querySelectorAll("video").forEach((v) => v.remove());
      stage.prepend(video);
      video.addEventListener("playing", () => { document.body.dataset.video = "playing"; });
    } else if (track.kind === Track.Kind.Audio) {
      const audio = track.attach();
      audio.hidden = true;
      document.body.append(audio);
    }
  });
  room.on(RoomEvent.TrackUnsubscribed, (track: RemoteTrack) => {
    track.detach().forEach((el) => el.remove());
    if (track.kind === Track.Kind.Video && !stage.querySelector("video")) {
      $("placeholder").hidden = false;
      $("join-state").textContent = "The avatar left the room.";
    }
  });

  const agentState = (): void => {
    const agents = [...room.remoteParticipants.values()].filter(isAgent);
    const el = $("agent-state");
    if (agents.length === 0) {
      el.textContent = "waiting to join";
      return;
    }
    const state = agents.map((a) => a.attributes?.[ATTR_AGENT_STATE]).find(Boolean);
    el.textContent = state ? `${state}` : "in the room";
    document.body.dataset.agent = state ?? "joined";
    if (stage.querySelector("video") === null) $("join-state").textContent = "Agent joined, waiting for video…";
  };
  room.on(RoomEvent.ParticipantConnected, agentState);
  room.on(RoomEvent.ParticipantDisconnected, agentState);
  room.on(RoomEvent.ParticipantAttributesChanged, agentState);

  room.on(RoomEvent.ConnectionStateChanged, (state: ConnectionState) => {
    if (state === ConnectionState.Connected) setJoinState("connected", "Waiting for the agent…");
    else if (state === ConnectionState.Reconnecting) setJoinState("reconnecting", "Reconnecting…");
    else if (state === ConnectionState.Disconnected) {
      setJoinState("disconnected", "You left the room.");
      muteBtn.disabled = true;
      leaveBtn.disabled = true;
    }
  });

  muteBtn.addEventListener("click", async () => {
    const enabled = room.localParticipant.isMicrophoneEnabled;
    await room.localParticipant.setMicrophoneEnabled(!enabled);
    const nowOn = room.localParticipant.isMicrophoneEnabled;
    muteBtn.classList.toggle("off", !nowOn);
    muteBtn.setAttribute("aria-pressed", String(!nowOn));
    muteBtn.title = nowOn ? "Mute microphone" : "Unmute microphone";
    $("mic-state").textContent = nowOn ? "on" : "muted";
  });
  leaveBtn.addEventListener("click", async () => {
    await room.disconnect();
    window.location.assign(back);
  });

  window.setInterval(() => {
    const level = room.localParticipant.isMicrophoneEnabled ? room.localParticipant.audioLevel : 0;
    ($("mic-level") as HTMLElement).style.width = `${Math.min(100, Math.round(level * 300))}%`;
  }, 120);

  setJoinState("connecting", "Connecting…");
  try {
    await room.connect(url, token);
    await room.localParticipant.setMicrophoneEnabled(true);
    $("mic-state").textContent = "on";
    muteBtn.disabled = false;
    leaveBtn.disabled = false;
    agentState();
  } catch (err) {
    setJoinState("error", "Could not join: " + String((err as Error)?.message ?? err));
    leaveBtn.disabled = true;
  }
}

main().catch((err) => setJoinState("error", String(err)));
