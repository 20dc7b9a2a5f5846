# The offline-queue flood of docs/security.md, measured from outside: N
# sender names fill every offline queue (60 KB messages to names that never
# connect, then five names top up the gaps with 1-byte ones), and then a
# resuming pair (as the page and `vivachat client` connect) tries to chat.
# Not run by CI (it needs `pip install websockets`). On this machine only:
#   vivachat serve --quiet --port 8991 --max-memory 256MiB &
#   python3 demos/attack-fill-offline.py 8991 16
import asyncio, json, sys, time, websockets
PORT = int(sys.argv[1]); N = int(sys.argv[2])
BIG = "m" * 60000
async def sender(k, text, prefix):
    async with websockets.connect(f"ws://127.0.0.1:{PORT}/ws/{prefix}{k}", max_size=None) as ws:
        await ws.recv()
        sent = 0
        while True:
            for _ in range(16):
                await ws.send(json.dumps({"type":"message","to":f"nobody{prefix}{k}x{sent % 500}","text":text})); sent += 1
            full = False
            for _ in range(16):
                r = json.loads(await ws.recv())
                if r.get("code") == "inbox_full": full = True
            if full: return sent
async def main():
    t = time.time()
    await asyncio.gather(*[sender(k, BIG, "s") for k in range(N)])
    await asyncio.gather(*[sender(k, ".", "t") for k in range(5)])
    fill = time.time() - t
    async with websockets.connect(f"ws://127.0.0.1:{PORT}/ws/bob?resume=0") as bob, websockets.connect(f"ws://127.0.0.1:{PORT}/ws/alice?resume=0") as alice:
        await bob.recv(); await alice.recv(); await bob.recv()
        ok = 0
        for i in range(20):
            await alice.send(json.dumps({"type":"message","to":"bob","text":f"hi {i}"}))
            while True:
                r = json.loads(await alice.recv())
                if r["type"] in ("ack","error"): break
            ok += r.get("status") == "delivered"
            if r.get("status") != "delivered": continue
            while True:
                m = json.loads(await bob.recv())
                if m["type"] == "message": break
            await bob.send(json.dumps({"type":"received","id":m["id"]}))
    print(f"N={N}: filled in {fill:.1f}s; resuming pair: {ok}/20 delivered")
asyncio.run(main())
