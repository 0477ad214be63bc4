#!/usr/bin/env python3
"""How much preparing a WAL segment stalls the active segment's fdatasyncs.

One thread writes 64 KiB and fdatasyncs it in a loop on a written 64 MiB file (as the WAL
overwrites its prepared segment); meanwhile another prepares a new 64 MiB segment one way,
and the syncs' latency during the preparation is printed. Modes: none, buffered (all zeros,
then one fsync: what capstan did), sfrN (N KiB at a time, each sent to the disk and waited
for with sync_file_range: what it does now), directN (O_DIRECT writes of N KiB).

    python3 bench/sync-stall-probe.py buffered sfr256 direct256 [DIR]
(DIR defaults to a temporary directory under the current one: use the data disk.)
"""
import os, threading, time, mmap, sys, tempfile
args = [a for a in sys.argv[1:] if not os.path.isdir(a)]
dirs = [a for a in sys.argv[1:] if os.path.isdir(a)]
D = tempfile.mkdtemp(dir=dirs[0] if dirs else ".")
def prep_file(path, size):
    fd=os.open(path, os.O_CREAT|os.O_TRUNC|os.O_WRONLY)
    z=b"\0"*(1<<20)
    for _ in range(size>>20): os.write(fd,z)
    os.fsync(fd); os.close(fd)
wal=D+"/wal"; prep_file(wal, 64<<20)
def walloop(stop, lat):
    fd=os.open(wal, os.O_WRONLY)
    buf=b"x"*65536; off=0
    while not stop.is_set():
        t=time.perf_counter()
        os.pwrite(fd,buf,off); os.fdatasync(fd)
        lat.append(time.perf_counter()-t)
        off=(off+65536)%(60<<20)
    os.close(fd)
def prepare(mode, path, size=64<<20):
    if mode=="buffered":
        prep_file(path,size)
    elif mode.startswith("direct"):
        chunk=int(mode[6:] or 1024)<<10
        fd=os.open(path, os.O_CREAT|os.O_TRUNC|os.O_WRONLY|os.O_DIRECT)
        m=mmap.mmap(-1,chunk)
        for i in range(size//chunk): os.pwritev(fd,[m],i*chunk)
        os.fsync(fd); os.close(fd)
    elif mode.startswith("sfr"):
        import ctypes
        libc=ctypes.CDLL("libc.so.6",use_errno=True)
        chunk=int(mode[3:] or 1024)<<10
        fd=os.open(path, os.O_CREAT|os.O_TRUNC|os.O_WRONLY)
        z=b"\0"*chunk
        for i in range(size//chunk):
            os.write(fd,z)
            r=libc.sync_file_range(fd,ctypes.c_longlong(i*chunk),ctypes.c_longlong(chunk),ctypes.c_uint(7))
            assert r==0, ctypes.get_errno()
        os.fsync(fd); os.close(fd)
    elif mode=="none":
        time.sleep(0.5)
def pct(l,p): l=sorted(l); return l[min(len(l)-1,int(len(l)*p))]*1000
for mode in args:
    for rep in range(2):
        stop=threading.Event(); lat=[]
        th=threading.Thread(target=walloop,args=(stop,lat)); th.start()
        time.sleep(0.3); n0=len(lat)
        t=time.perf_counter(); prepare(mode, D+"/seg"); dt=time.perf_counter()-t
        time.sleep(0.1); stop.set(); th.join()
        l=lat[n0:]
        print(f"{mode:10s} prep {dt*1000:7.1f} ms  wal syncs {len(l):5d} p50 {pct(l,.5):6.2f} p99 {pct(l,.99):6.2f} max {max(l)*1000:6.2f} ms")
        os.unlink(D+"/seg") if os.path.exists(D+"/seg") else None
os.unlink(wal)
os.rmdir(D)
