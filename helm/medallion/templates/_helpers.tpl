{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "medallion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; components append a suffix, so keep room for it. */}}
{{- define "medallion.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "medallion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "user-code"). */}}
{{- define "medallion.labels" -}}
helm.sh/chart: {{ include "medallion.chart" .ctx }}
{{ include "medallion.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: medallion
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "medallion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medallion.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The one image reference. The tag is required and never `latest` (the schema says so too). */}}
{{- define "medallion.image" -}}
{{- $tag := required "image.tag is required: an immutable release version or commit sha" .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag must not be `latest`: run pods must start from the code server's exact image" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "medallion.configMapName" -}}
{{- printf "%s-config" (include "medallion.fullname" .) -}}
{{- end -}}

{{- define "medallion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-runs" (include "medallion.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "medallion.userCodeServiceName" -}}
{{- printf "%s-user-code" (include "medallion.fullname" .) -}}
{{- end -}}

{{/*
The lake root, checked against the deployment: a local path (local-path mode) must lie on the data
volume, which must then be a claim, or the lake would vanish with the pod. The schema has already
refused anything that is neither an object-store URI nor an absolute path.
*/}}
{{- define "medallion.lakeRoot" -}}
{{- $root := required "config.lake.root is required: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, or a folder under config.dataDir with persistence.enabled" .Values.config.lake.root -}}
{{- if hasPrefix "/" $root -}}
{{- $dataDir := trimSuffix "/" .Values.config.dataDir -}}
{{- if not (or (eq (trimSuffix "/" $root) $dataDir) (hasPrefix (printf "%s/" $dataDir) $root)) -}}
{{- fail (printf "config.lake.root %q is a local path outside config.dataDir %q: in local-path mode the lake lives on the data volume, mounted at dataDir" $root .Values.config.dataDir) -}}
{{- end -}}
{{- if not .Values.persistence.enabled -}}
{{- fail (printf "config.lake.root %q is a local path but persistence.enabled is false: the lake would live in an emptyDir and vanish with the pod. Set persistence.enabled (a ReadWriteMany claim), or put the lake on object storage (s3://, gs://, az://)" $root) -}}
{{- end -}}
{{- end -}}
{{- $root -}}
{{- end -}}

{{/* Pod labels the identity needs: Azure workload identity injects its token only into labelled pods. */}}
{{- define "medallion.identityPodLabels" -}}
{{- if hasKey .Values.serviceAccount.annotations "azure.workload.identity/client-id" -}}
azure.workload.identity/use: "true"
{{- end -}}
{{- end -}}

{{- define "medallion.dataClaimName" -}}
{{- default (printf "%s-data" (include "medallion.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
Pod Security Standard "restricted": non-root uid/gid of the image, RuntimeDefault seccomp; fsGroup
makes the data volume and the SFTP key files readable by that group.
*/}}
{{- define "medallion.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "medallion.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Environment from Secrets. Call with (dict "ctx" $ "env" <map of VARIABLE: {key, secretName, optional}>).
Returns a YAML list of EnvVar objects, sorted by variable name.
*/}}
{{- define "medallion.secretEnvList" -}}
{{- $env := list -}}
{{- range $name, $ref := .env -}}
{{- $selector := dict "name" (default $.ctx.Values.secrets.existingSecret $ref.secretName) "key" $ref.key -}}
{{- if $ref.optional -}}
{{- $_ := set $selector "optional" true -}}
{{- end -}}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" $selector)) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
Volumes shared by the code server and the run pods: /tmp, dataDir (the claim in local-path mode,
else scratch), the SFTP keys and, for a gs:// lake without workload identity, the Google key.
*/}}
{{- define "medallion.workVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
- name: data
{{- if .ctx.Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "medallion.dataClaimName" .ctx }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: sftp-keys
  secret:
    secretName: {{ .ctx.Values.secrets.sftp.existingSecret }}
    defaultMode: 288 {{- /* 0440: owner and fsGroup read */}}
    items:
      - key: {{ .ctx.Values.secrets.sftp.privateKeyKey }}
        path: id_ed25519
      - key: {{ .ctx.Values.secrets.sftp.knownHostsKey }}
        path: known_hosts
{{- with .ctx.Values.secrets.googleCredentials }}
{{- if .existingSecret }}
- name: google-credentials
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 288 {{- /* 0440: owner and fsGroup read */}}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "medallion.workVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.config.dataDir }}
- name: sftp-keys
  mountPath: /etc/medallion/sftp
  readOnly: true
{{- if .Values.secrets.googleCredentials.existingSecret }}
- name: google-credentials
  mountPath: /etc/medallion/google
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Container context of the code location (DAGSTER_CONTAINER_CONTEXT). The K8sRunLauncher and
k8s_job_executor apply it to every run and step pod, so they get the same configuration, secrets,
volumes, identity (service account and its workload identity labels) and security context as the
code server, and their own resources.
*/}}
{{- define "medallion.runContainerContext" -}}
{{- $k8s := dict
  "namespace" .Release.Namespace
  "service_account_name" (include "medallion.serviceAccountName" .)
  "image_pull_policy" .Values.image.pullPolicy
  "env_config_maps" (list (include "medallion.configMapName" .))
  "env" (fromYamlArray (include "medallion.secretEnvList" (dict "ctx" . "env" .Values.secrets.userCode)))
  "volumes" (fromYamlArray (include "medallion.workVolumes" (dict "ctx" . "tmpSizeLimit" .Values.runs.tmpSizeLimit)))
  "volume_mounts" (fromYamlArray (include "medallion.workVolumeMounts" .))
  "resources" .Values.runs.resources
  "security_context" (fromYaml (include "medallion.containerSecurityContext" .))
  "run_k8s_config" (dict
    "pod_spec_config" (dict "security_context" (fromYaml (include "medallion.podSecurityContext" .)))
    "job_spec_config" (dict "ttl_seconds_after_finished" .Values.runs.ttlSecondsAfterFinished))
-}}
{{- with .Values.imagePullSecrets -}}
{{- $_ := set $k8s "image_pull_secrets" . -}}
{{- end -}}
{{- with include "medallion.identityPodLabels" . -}}
{{- $_ := set $k8s "labels" (fromYaml .) -}}
{{- end -}}
{{- dict "k8s" $k8s | toJson -}}
{{- end -}}
