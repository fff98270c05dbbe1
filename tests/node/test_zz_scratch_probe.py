import os, subprocess, json
from pathlib import Path
import pytest
from diskguard.model import IOLimits
from diskguard.node.limits import V2Backend

pytestmark = pytest.mark.v2

def fio(run_in_cgroup, cg, target, rw, engine, depth, rt=3, bs="4k", extra=()):
    argv = ["fio","--name=x",f"--filename={target}","--size=64M",f"--rw={rw}",f"--bs={bs}","--direct=1",f"--ioengine={engine}",f"--iodepth={depth}",f"--runtime={rt}","--time_based","--thread","--output-format=json",*extra]
    p = run_in_cgroup(cg, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    j = json.loads(out.decode()[out.decode().index("{"):])["jobs"][0]
    return j["read"]["iops"], j["write"]["iops"], j["read"]["io_bytes"]

def test_probe(container_cgroup, loop_disk, run_in_cgroup, make_loop_disk):
    raw = make_loop_disk(size_mib=128, filesystem=False)
    b = V2Backend()
    cg = container_cgroup
    print("HZ?", os.sysconf("SC_CLK_TCK"))
    for name, dev, target in [("raw-loop", raw.device, str(raw.node)), ("vda", None, "/dev/vda")]:
        if dev is None:
            st = os.stat(target); 
            from diskguard.model import Device
            dev = Device(os.major(st.st_rdev), os.minor(st.st_rdev))
        for lim in [IOLimits(rbps=1<<20), IOLimits(riops=256), IOLimits(rbps=4<<20)]:
            b.write(cg, dev, lim)
            for engine, depth in [("psync",1),("libaio",4)]:
                before = (cg/"io.stat").read_text()
                r = fio(run_in_cgroup, cg, target, "randread", engine, depth)
                after = (cg/"io.stat").read_text()
                print("PROBE", name, lim, engine, depth, r, "|", after.strip())
            b.write(cg, dev, IOLimits())
