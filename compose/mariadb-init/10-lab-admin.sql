-- The drill user `./lab up` creates too (STOP SLAVE and friends in part 2).
CREATE USER IF NOT EXISTS 'labadmin'@'%' IDENTIFIED BY 'labadmin';
GRANT ALL PRIVILEGES ON *.* TO 'labadmin'@'%' WITH GRANT OPTION;
-- The app user may create databases (tests make one each), as under ./lab.
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES, LOCK TABLES,
      EXECUTE, CREATE VIEW, SHOW VIEW, REFERENCES, TRIGGER, PROCESS, BINLOG MONITOR, SLAVE MONITOR
   ON *.* TO 'lab'@'%';
