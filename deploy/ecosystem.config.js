// pm2 process file: starts exactly what the Procfile starts.
//   pm2 start deploy/ecosystem.config.js && pm2 logs
// Run ./run (or ./test) once first so that .venv exists.
const path = require("path");
const root = path.resolve(__dirname, "..");
const python = path.join(root, ".venv", "bin", "python");

const service = (name, script) => ({
  name: `aivtuber-${name}`,
  script,
  interpreter: python,
  cwd: root,
  env: { PYTHONUNBUFFERED: "1" },
  autorestart: true,
  // Exit code 2 is a config error: restarting cannot fix it.
  stop_exit_codes: [0, 2],
  kill_timeout: 15000,
  max_restarts: 10,
  restart_delay: 2000,
});

module.exports = {
  apps: [
    service("gateway", "services/gateway-python/main.py"),
    service("input", "services/input-handler-python/main.py"),
    service("output", "services/output-handler-python/main.py"),
    service("tts", "services/tts-worker/main.py"),
  ],
};
