"""nginx as the anchor: a loopback WebSocket reverse proxy configured by the bench.

The bench writes nginx.conf into the run's temporary directory and starts
``nginx -p DIR -c DIR/nginx.conf -e DIR/error.log`` in the foreground (``daemon off``) as the
current user, with one worker process: the gateway is one process too, so both get the same
share of the two cores. Nothing under /etc or /var is read or written.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

from .procs import Proc

__all__ = ["INSTALL_HINT", "find_nginx", "nginx_proc", "nginx_version"]

INSTALL_HINT = (
    "nginx was not found ($BENCH_NGINX, PATH, /usr/sbin), so the nginx column is skipped. "
    "To compare against it: sudo apt-get install -y nginx (Debian/Ubuntu), then run again."
)
_SEARCH = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> str | None:
    """The nginx binary (``$BENCH_NGINX``, PATH, the usual sbin folders), or None."""
    explicit = os.environ.get("BENCH_NGINX")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in _SEARCH if os.access(path, os.X_OK)), None)


def nginx_version(binary: str) -> str:
    # nginx prints its version on stderr: "nginx version: nginx/1.22.1".
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


def render_config(prefix: Path, port: int, backend_port: int, max_conns: int) -> str:
    user = ""
    if os.geteuid() == 0:
        # A root master hands its workers to "nobody" unless told otherwise; the bench runs
        # everything as the current user.
        user = f"user {getpass.getuser()};"
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    return f"""
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile {max_conns * 4 + 2048};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {max_conns * 4 + 1024};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def nginx_proc(
    binary: str, work_dir: Path, port: int, backend_port: int, max_conns: int, name: str
) -> Proc:
    """A not yet started :class:`Proc` for nginx proxying ``port`` -> ``backend_port``."""
    prefix = work_dir / name
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render_config(prefix, port, backend_port, max_conns), encoding="utf-8")
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Proc(name, argv, work_dir)
