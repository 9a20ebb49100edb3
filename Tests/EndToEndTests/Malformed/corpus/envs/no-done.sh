while read l; do case "$l" in *reset*) echo '{"prompt": "x"}';; *) echo '{"observation": "", "reward": 1}';; esac; done
