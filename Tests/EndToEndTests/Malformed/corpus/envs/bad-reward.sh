read l; echo '{"prompt": "x"}'; while read l; do echo '{"observation": "", "reward": "a lot", "done": true}'; done
