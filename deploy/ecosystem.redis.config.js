// pm2 process file for the stack on the Redis bus: starts exactly what Procfile.redis starts.
//   pm2 start deploy/ecosystem.redis.config.js && pm2 logs
// Needs a running redis-server with a password, given as REDIS_URL in pm2's environment
// (REDIS_URL=redis://:<password>@127.0.0.1:6379/0 pm2 start ...); run ./test once first so
// that .venv exists.
const path = require("path");
const root = path.resolve(__dirname, "..");
const python = path.join(root, ".venv", "bin", "python");

const service = (name, script, args) => ({
  name: `aivtuber-redis-${name}`,
  script,
  args,
  interpreter: python,
  cwd: root,
  // REDIS_URL (the password) is passed on from the environment, never written here.
  env: { PYTHONUNBUFFERED: "1", ...(process.env.REDIS_URL ? { REDIS_URL: process.env.REDIS_URL } : {}) },
  autorestart: true,
  // Exit code 2 is a config error: restarting cannot fix it.
  stop_exit_codes: [0, 2],
  kill_timeout: 15000,
  max_restarts: 10,
  restart_delay: 2000,
});

module.exports = {
  apps: [
    service("gateway", "services/gateway-python/main.py", "--config config.redis.json"),
    service("input", "services/input-handler-python/main.py", "--config config.redis.json"),
    service("output-8002", "services/output-handler-python/main.py", "--config config.redis.json --port 8002"),
    service("output-8012", "services/output-handler-python/main.py", "--config config.redis.json --port 8012"),
    service("tts-8003", "services/tts-worker/main.py", "--config config.redis.json --port 8003"),
  ],
};
