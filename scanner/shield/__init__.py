"""The query shield: stateful defence against online query-based attacks (issue 35).  Design note to follow."""
