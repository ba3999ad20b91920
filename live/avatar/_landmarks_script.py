"""Find face landmarks in one photo with MediaPipe FaceMesh; print them as JSON.

Runs only inside the separate portrait venv (mediapipe 0.10.21 pins protobuf<5, which cannot
share an environment with livekit), so it imports nothing from this project: stdlib, numpy,
cv2 and mediapipe only. Usage: ``python _landmarks_script.py PHOTO`` -> JSON on stdout with
``width``, ``height`` and ``points`` (478 x [x, y, z] in pixels, z relative).
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import cv2
    import mediapipe as mp

    if len(argv) != 2:
        print("usage: _landmarks_script.py PHOTO", file=sys.stderr)
        return 2
    bgr = cv2.imread(argv[1], cv2.IMREAD_COLOR)
    if bgr is None:
        print(f"cannot read image {argv[1]!r}", file=sys.stderr)
        return 3
    h, w = bgr.shape[:2]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=True,
        min_detection_confidence=0.5,
    ) as mesh:
        result = mesh.process(rgb)
    if not result.multi_face_landmarks:
        print("no face found in the photo", file=sys.stderr)
        return 4
    lms = result.multi_face_landmarks[0].landmark
    points = [[lm.x * w, lm.y * h, lm.z * w] for lm in lms]
    json.dump({"width": w, "height": h, "points": points, "model": "mediapipe-facemesh-0.10.21"},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
