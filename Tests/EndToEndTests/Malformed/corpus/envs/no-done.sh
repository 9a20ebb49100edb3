read l; echo '{"prompt": "x"}'; while read l; do echo '{"observation": "", "reward": 1}'; done
