while read l; do echo '{"p": 1}'; done
