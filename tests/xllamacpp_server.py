"""Child process for tests/llm_servers.py: llama.cpp's OpenAI-compatible server through xllamacpp
(a prebuilt wheel), serving one GGUF on 127.0.0.1 until killed. A process of its own, so a test can
SIGKILL it mid-run like a crashed server.

    python tests/xllamacpp_server.py MODEL.gguf PORT [N_CTX] [THREADS]
"""

import sys
import time

import xllamacpp


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    params = xllamacpp.CommonParams()
    params.model.path = model
    params.n_ctx = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    params.cpuparams.n_threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    params.hostnames = ["127.0.0.1"]  # loopback only
    params.port = port
    server = xllamacpp.Server(params)  # serves while this object lives
    print(f"listening {server.listening_address}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
