import asyncio, time
from tests.backend.conftest import Api

async def test_probe(start_station, start_device, start_silent, http):
    station = await start_station(read_timeout=10, reply_wait=10)
    api = Api(http, station.url)
    silent = await start_silent()
    await api.register("2025001", silent.address)
    sid = await api.start_session()
    task = asyncio.ensure_future(api.post("/wxapp/notify_device_start/", data={"session_id": sid, "device_code": "2025001"}))
    await asyncio.sleep(0.3)
    t = time.monotonic()
    await station.stop()
    print("stop took", time.monotonic() - t)
    try:
        print(await task)
    except Exception as e:
        print("task", repr(e))
