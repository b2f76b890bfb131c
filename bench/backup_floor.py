"""The floor for a backup: page through resource types with raw GETs and throw the bodies away.

    python bench/backup_floor.py --kubeconfig FILE [--concurrency 4] [--chunk-size 500] TYPE...

kubecare's own HTTP client and kubeconfig handling (the same transport as `kubecare backup
create`), the same page size and the same number of types at once; no JSON parsing, no
archive. What kubecare's backup adds on top of this is its own cost. TYPE is `resource` or
`resource.group` (the archive manifest's spelling).
"""

from __future__ import annotations

import argparse
import asyncio
import re

from kubecare.kube import ClientOptions, Kube
from kubecare.kube.discovery import discover

_CONTINUE = re.compile(rb'"continue":"([^"]*)"')


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("types", nargs="+")
    args = parser.parse_args()
    async with Kube(ClientOptions(kubeconfig=args.kubeconfig)) as kube:
        kube.http.headers["User-Agent"] = "floor/"
        wanted = set(args.types)
        found = {}
        for r in await discover(kube):  # the same discovery kubecare does
            name = f"{r.resource}.{r.group}" if r.group else r.resource
            if name in wanted and name not in found:
                found[name] = r.path()
        sem = asyncio.Semaphore(args.concurrency)
        total = 0

        async def one(path: str) -> None:
            nonlocal total
            async with sem:
                token = None
                while True:
                    params = {"limit": args.chunk_size, **({"continue": token} if token else {})}
                    resp = await kube.http.get(path, params=params)
                    resp.raise_for_status()
                    total += len(resp.content)
                    # The token sits in the list's metadata, before the items: no JSON parse.
                    m = _CONTINUE.search(resp.content[:4096])
                    token = m.group(1).decode() if m and m.group(1) else None
                    if not token:
                        return

        await asyncio.gather(*(one(p) for p in found.values()))
    print(total)


if __name__ == "__main__":
    asyncio.run(main())
