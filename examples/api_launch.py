"""Launch an avatar session through the JSON API and print how to join it.

    avatar token create demo          # prints a token once
    python examples/api_launch.py --token <token> --persona "You are a patient math tutor."
"""

from __future__ import annotations

import argparse
import json
import urllib.request


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--token", required=True, help="API token from `avatar token create`")
    p.add_argument("--persona", default=None, help="instructions for the agent")
    p.add_argument("--greeting", default=None)
    p.add_argument("--room", default=None)
    args = p.parse_args()
    body: dict[str, object] = {}
    if args.persona:
        body["instructions"] = args.persona
    if args.greeting:
        body["greeting"] = args.greeting
    if args.room:
        body["room"] = args.room
    req = urllib.request.Request(
        f"{args.base_url}/api/v1/sessions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        session = json.load(resp)
    print(json.dumps(session, indent=2))
    print(f"\njoin from a LiveKit client: url={session.get('livekit_url')} room={session.get('room')}")


if __name__ == "__main__":
    main()
